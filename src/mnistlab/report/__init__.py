"""Reports: a run's figures and one self-contained HTML page, comparisons of several runs, and
TensorBoard event files.

- `run`: reading a run folder (model, metadata, metrics.jsonl), strictly;
- `analysis`: the model measured once over a split, and its first layer's weights;
- `figures`: the PNG figures (matplotlib, Agg);
- `html`: the page's building blocks: escaped text, embedded images, inline style;
- `build`: a run's report (`write_report`);
- `compare`: several runs on one chart and in one table (`compare_runs`);
- `tensorboard`: TensorBoard event files through `torch.utils.tensorboard` (`TensorBoardLogger`,
  a Trainer's on_log; needs the optional `tensorboard` package).
"""
