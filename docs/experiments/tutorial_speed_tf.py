"""One tutorial recipe trained in TensorFlow, as the tutorial's own code trains it, timed.

    python tutorial_speed_tf.py RECIPE --steps N --data DIR [--turns]

Run with a TensorFlow environment's Python (TF 2.21, Keras 3), never mnistlab's:
docs/experiments/tutorial_speed.py makes that environment and runs this script in it, N steps
at a time, against the same recipe in mnistlab. RECIPE is one of softmax-regression,
deep-mnist, deep-mnist-as-printed, opengenus-cnn, strided-cnn, keras-cnn; DIR holds MNIST's
four IDX files (gzipped or not). Prints one JSON line on stdout: recipe, steps, batch_size,
updates, seconds, warmup_seconds, tf_version, keras_version (keras-cnn), threads. The
tutorials' own progress lines go to stderr. With --turns it prints those facts without
`seconds` after the warm-up, then times N steps at each "go" line on stdin, one JSON line
({"seconds": S}) each, the batches and weights going on from turn to turn: how
tutorial_speed.py alternates it with mnistlab's side.

`seconds` is the wall time of the N steps: each step's data feeding (next_batch, the
feed_dict) and the tutorial's per-step fetches and logging included; graph building,
data loading and variable initialisation excluded. So is the first run of every distinct
`session.run` (TensorFlow optimises the graph and builds an executor then) and Keras' tracing
of its train function: both are done once before the clock starts, on a batch of their own,
and reported as `warmup_seconds`.

The graphs are the tutorials' TF1 code through tf.compat.v1, line for line where TF 2.21
still has the call; threads and precision are TensorFlow's defaults (fp32, oneDNN on).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines only; changes no setting
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1

TRAIN_SIZE = 60_000
VALIDATION_SIZE = 5_000  # input_data's default: the first 5,000 training images


# -----------------------------------------------------------------------------
# Data: what the tutorials' loaders returned, from the IDX files.


def read_idx(folder: Path, stem: str) -> np.ndarray:
    """An IDX file (STEM or STEM.gz) as a uint8 array of its own shape."""
    path = folder / stem
    if not path.exists():
        path = folder / f"{stem}.gz"
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]  # magic: 0, 0, 8 (unsigned byte), number of dimensions
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def train_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training images (uint8, 60000x28x28) and labels (uint8)."""
    return read_idx(folder, "train-images-idx3-ubyte"), read_idx(folder, "train-labels-idx1-ubyte")


class TrainSet:
    """`mnist.train` of TF1's input_data: images flattened to 784 float32 in [0, 1], labels
    one-hot float32 or uint8, and next_batch.

    next_batch returns the batches input_data's did: a fresh permutation at each epoch, and a
    batch that crosses an epoch's end takes the old epoch's rest and the new one's head. It
    gathers each batch through the permutation, where input_data copied the whole set into
    the new order at every epoch's start (about 170 MB, a pause in the first step of an epoch).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, one_hot: bool, seed: int = 0):
        self.images = images.reshape(len(images), 784).astype(np.float32) * np.float32(1 / 255)
        self.labels = np.eye(10, dtype=np.float32)[labels] if one_hot else labels.copy()
        self.num_examples = len(images)
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self.num_examples)
        self._index = 0

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self._index, self._index + batch_size
        if end <= self.num_examples:
            chosen = self._order[start:end]
            self._index = end
        else:  # the rest of this epoch, then the head of a freshly shuffled one
            rest = self._order[start:]
            self._order = self._rng.permutation(self.num_examples)
            self._index = batch_size - len(rest)
            chosen = np.concatenate([rest, self._order[: self._index]])
        return self.images[chosen], self.labels[chosen]


def read_data_sets(folder: Path, *, one_hot: bool) -> TrainSet:
    """input_data.read_data_sets(...).train: the last 55,000 of the training file (input_data
    kept the first 5,000 for validation)."""
    images, labels = train_arrays(folder)
    return TrainSet(images[VALIDATION_SIZE:], labels[VALIDATION_SIZE:], one_hot=one_hot)


def first_batch(mnist: TrainSet, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch for the warm-up, taken aside so that next_batch's sequence starts untouched."""
    return mnist.images[:batch_size], mnist.labels[:batch_size]


# -----------------------------------------------------------------------------
# The recipes. Each builds its graph and session, then returns what main times.


@dataclass
class Timed:
    batch_size: int
    warm_up: Callable[[], None]  # the first run of every distinct session.run, once
    loop: Callable[[], None]  # the N steps, as the tutorial writes its loop
    updates: int  # the training updates among the N steps
    extra: dict | None = None  # anything else worth reporting


def log(*parts: object) -> None:
    """The tutorials' print lines, on stderr: stdout carries the one JSON line."""
    print(*parts, file=sys.stderr)


def session(graph: tf.Graph) -> v1.Session:
    """A session with the default ConfigProto (thread pools sized by TensorFlow), initialised."""
    sess = v1.Session(graph=graph)
    with graph.as_default():
        sess.run(v1.global_variables_initializer())  # the tutorials' initialize_all_variables()
    return sess


def softmax_regression(steps: int, data: Path) -> Timed:
    """Deep MNIST for Experts, first part: softmax regression, gradient descent at 0.01 on
    the summed cross-entropy, 50 images a step."""
    mnist = read_data_sets(data, one_hot=True)
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, shape=[None, 784])
        y_ = v1.placeholder(tf.float32, shape=[None, 10])
        W = tf.Variable(tf.zeros([784, 10]))
        b = tf.Variable(tf.zeros([10]))
        y = tf.nn.softmax(tf.matmul(x, W) + b)
        cross_entropy = -tf.reduce_sum(y_ * tf.math.log(y))
        train_step = v1.train.GradientDescentOptimizer(0.01).minimize(cross_entropy)
    sess = session(graph)
    wx, wy = first_batch(mnist, 50)

    def warm_up() -> None:
        sess.run(train_step, feed_dict={x: wx, y_: wy})

    def loop() -> None:
        for _ in range(steps):
            batch = mnist.next_batch(50)
            sess.run(train_step, feed_dict={x: batch[0], y_: batch[1]})  # train_step.run(...)

    return Timed(50, warm_up, loop, updates=steps)


def deep_mnist_graph():
    """Deep MNIST for Experts' convolutional network, its loss and its Adam step."""

    def weight_variable(shape):
        return tf.Variable(tf.random.truncated_normal(shape, stddev=0.1))

    def bias_variable(shape):
        return tf.Variable(tf.constant(0.1, shape=shape))

    def conv2d(x, W):
        return tf.nn.conv2d(x, W, strides=[1, 1, 1, 1], padding="SAME")

    def max_pool_2x2(x):
        return v1.nn.max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")

    x = v1.placeholder(tf.float32, shape=[None, 784])
    y_ = v1.placeholder(tf.float32, shape=[None, 10])
    W_conv1 = weight_variable([5, 5, 1, 32])
    b_conv1 = bias_variable([32])
    x_image = tf.reshape(x, [-1, 28, 28, 1])
    h_conv1 = tf.nn.relu(conv2d(x_image, W_conv1) + b_conv1)
    h_pool1 = max_pool_2x2(h_conv1)
    W_conv2 = weight_variable([5, 5, 32, 64])
    b_conv2 = bias_variable([64])
    h_conv2 = tf.nn.relu(conv2d(h_pool1, W_conv2) + b_conv2)
    h_pool2 = max_pool_2x2(h_conv2)
    W_fc1 = weight_variable([7 * 7 * 64, 1024])
    b_fc1 = bias_variable([1024])
    h_pool2_flat = tf.reshape(h_pool2, [-1, 7 * 7 * 64])
    h_fc1 = tf.nn.relu(tf.matmul(h_pool2_flat, W_fc1) + b_fc1)
    keep_prob = v1.placeholder(tf.float32)
    h_fc1_drop = v1.nn.dropout(h_fc1, keep_prob)
    W_fc2 = weight_variable([1024, 10])
    b_fc2 = bias_variable([10])
    y_conv = tf.nn.softmax(tf.matmul(h_fc1_drop, W_fc2) + b_fc2)
    cross_entropy = -tf.reduce_sum(y_ * tf.math.log(y_conv))
    train_step = v1.train.AdamOptimizer(1e-4).minimize(cross_entropy)
    correct_prediction = tf.equal(tf.argmax(y_conv, 1), tf.argmax(y_, 1))
    accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32))
    return x, y_, keep_prob, train_step, accuracy


def deep_mnist(steps: int, data: Path, *, as_printed: bool = False) -> Timed:
    """Deep MNIST for Experts' CNN, 50 images a step, the training accuracy logged every 100.

    As printed, train_step.run sits inside `if i%100 == 0:`: every iteration draws a batch,
    one in a hundred trains. Intended (the default), every iteration trains."""
    mnist = read_data_sets(data, one_hot=True)
    with tf.Graph().as_default() as graph:
        x, y_, keep_prob, train_step, accuracy = deep_mnist_graph()
    sess = session(graph)
    wx, wy = first_batch(mnist, 50)

    def warm_up() -> None:
        sess.run(accuracy, feed_dict={x: wx, y_: wy, keep_prob: 1.0})
        sess.run(train_step, feed_dict={x: wx, y_: wy, keep_prob: 0.5})

    def train(batch) -> None:
        sess.run(train_step, feed_dict={x: batch[0], y_: batch[1], keep_prob: 0.5})

    def loop() -> None:
        for i in range(steps):
            batch = mnist.next_batch(50)
            if i % 100 == 0:
                train_accuracy = sess.run(accuracy, feed_dict={
                    x: batch[0], y_: batch[1], keep_prob: 1.0})
                log(f"step {i}, training accuracy {train_accuracy:g}")
                if as_printed:
                    train(batch)
            if not as_printed:
                train(batch)

    return Timed(50, warm_up, loop, updates=math.ceil(steps / 100) if as_printed else steps)


def opengenus_cnn(steps: int, data: Path) -> Timed:
    """OpenGenus' CNN: Deep MNIST's layers with N(0, 1) weights and biases, dropout at a fixed
    keep rate of 0.8, Adam with its defaults on the mean loss, 128 images a step, the loss
    fetched every step and summed over an epoch of int(55000 / 128) batches."""
    mnist = read_data_sets(data, one_hot=True)
    n_classes, batch_size, keep_rate = 10, 128, 0.8

    def conv2d(x, W):
        return tf.nn.conv2d(x, W, strides=[1, 1, 1, 1], padding="SAME")

    def maxpool2d(x):
        return v1.nn.max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")

    def convolutional_neural_network(x):
        weights = {"W_conv1": tf.Variable(tf.random.normal([5, 5, 1, 32])),
                   "W_conv2": tf.Variable(tf.random.normal([5, 5, 32, 64])),
                   "W_fc": tf.Variable(tf.random.normal([7 * 7 * 64, 1024])),
                   "out": tf.Variable(tf.random.normal([1024, n_classes]))}
        biases = {"b_conv1": tf.Variable(tf.random.normal([32])),
                  "b_conv2": tf.Variable(tf.random.normal([64])),
                  "b_fc": tf.Variable(tf.random.normal([1024])),
                  "out": tf.Variable(tf.random.normal([n_classes]))}
        x = tf.reshape(x, shape=[-1, 28, 28, 1])
        conv1 = tf.nn.relu(conv2d(x, weights["W_conv1"]) + biases["b_conv1"])
        conv1 = maxpool2d(conv1)
        conv2 = tf.nn.relu(conv2d(conv1, weights["W_conv2"]) + biases["b_conv2"])
        conv2 = maxpool2d(conv2)
        fc = tf.reshape(conv2, [-1, 7 * 7 * 64])
        fc = tf.nn.relu(tf.matmul(fc, weights["W_fc"]) + biases["b_fc"])
        fc = v1.nn.dropout(fc, keep_rate)
        return tf.matmul(fc, weights["out"]) + biases["out"]

    with tf.Graph().as_default() as graph:
        x = v1.placeholder("float", [None, 784])
        y = v1.placeholder("float")
        prediction = convolutional_neural_network(x)
        # printed as softmax_cross_entropy_with_logits(prediction, y): positional arguments
        # TF 1.0 already refused; labels=y, logits=prediction is what it means
        cost = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=prediction))
        optimizer = v1.train.AdamOptimizer().minimize(cost)
    sess = session(graph)
    wx, wy = first_batch(mnist, batch_size)
    per_epoch = int(mnist.num_examples / batch_size)

    def warm_up() -> None:
        sess.run([optimizer, cost], feed_dict={x: wx, y: wy})

    def loop() -> None:
        epoch_loss = 0.0
        for i in range(steps):
            epoch_x, epoch_y = mnist.next_batch(batch_size)
            _, c = sess.run([optimizer, cost], feed_dict={x: epoch_x, y: epoch_y})
            epoch_loss += c
            if (i + 1) % per_epoch == 0:
                log("Epoch", i // per_epoch, "completed, loss:", epoch_loss)
                epoch_loss = 0.0

    return Timed(batch_size, warm_up, loop, updates=steps)


def fully_connected(inputs, num_outputs, *, scope, activation_fn=tf.nn.relu):
    """tf.contrib.layers.fully_connected as the strided tutorial calls it (contrib is gone
    from TF 2): Xavier (Glorot uniform) weights, zero biases, ReLU unless told otherwise."""
    with v1.variable_scope(scope):
        weights = v1.get_variable("weights", [inputs.shape[-1], num_outputs],
                                  initializer=v1.glorot_uniform_initializer())
        biases = v1.get_variable("biases", [num_outputs], initializer=v1.zeros_initializer())
        outputs = tf.nn.bias_add(tf.matmul(inputs, weights), biases)
        return activation_fn(outputs) if activation_fn is not None else outputs


def strided_cnn(steps: int, data: Path) -> Timed:
    """The strided CNN tutorial: two stride-2 convolutions without bias or activation, each
    max-pooled, a 1024-unit layer, dropout (keep 0.5), Adam 1e-4 on the mean sparse loss,
    50 images a step, each batch reshaped to 28x28x1 before it is fed."""
    mnist = read_data_sets(data, one_hot=False)
    n_outputs, learning_rate, keep_prob_num, batch_size = 10, 1e-4, 0.5, 50
    with tf.Graph().as_default() as graph:
        X = v1.placeholder(tf.float32, shape=(None, 28, 28, 1))
        y = v1.placeholder(tf.int64, shape=(None), name="y")
        filters = tf.Variable(tf.random.truncated_normal((5, 5, 1, 32), stddev=0.1))
        filters_2 = tf.Variable(tf.random.truncated_normal((5, 5, 32, 64), stddev=0.1))
        with tf.name_scope("dnn"):
            convolution = tf.nn.conv2d(X, filters, strides=[1, 2, 2, 1], padding="SAME")
            max_pool = v1.nn.max_pool(convolution, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                      padding="VALID")
            convolution_2 = tf.nn.conv2d(max_pool, filters_2, strides=[1, 2, 2, 1], padding="SAME")
            max_pool_2 = v1.nn.max_pool(convolution_2, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                        padding="VALID")
            flatten = tf.reshape(max_pool_2, [-1, 2 * 2 * 64])
            predict = fully_connected(flatten, 1024, scope="predict")
            keep_prob = v1.placeholder(tf.float32)
            dropout = v1.nn.dropout(predict, keep_prob)
            logits = fully_connected(dropout, n_outputs, scope="outputs", activation_fn=None)
        with tf.name_scope("loss"):
            xentropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_mean(xentropy, name="loss")
        with tf.name_scope("train"):
            training_op = v1.train.AdamOptimizer(learning_rate).minimize(loss)
    sess = session(graph)
    wx, wy = first_batch(mnist, batch_size)
    iterations = mnist.num_examples // batch_size  # 1,100: an epoch

    def warm_up() -> None:
        sess.run(training_op, feed_dict={X: wx.reshape(-1, 28, 28, 1), y: wy, keep_prob: 0.5})

    def loop() -> None:
        for i in range(steps):
            X_batch, y_batch = mnist.next_batch(batch_size)
            X_batch_shaped = X_batch.reshape(X_batch.shape[0], 28, 28, 1)
            sess.run(training_op, feed_dict={X: X_batch_shaped, y: y_batch,
                                             keep_prob: keep_prob_num})
            if (i + 1) % iterations == 0:
                log("epoch:", i // iterations)

    return Timed(batch_size, warm_up, loop, updates=steps)


def keras_cnn(steps: int, data: Path) -> Timed:
    """The Keras tutorial (Deep Learning with Python, 5.1): its Sequential CNN compiled with
    "rmsprop", categorical cross-entropy and the accuracy metric, fit on all 60,000 images in
    batches of 64 (an epoch is 938 batches, the last of 32).

    N batches: whole epochs as the tutorial's fit runs them, then the rest as one fit with
    steps_per_epoch. Keras traces its train function on the first fit; the warm-up is a fit
    of 160 images (two batches of 64 and one of 32, the two shapes an epoch feeds), after which
    the timed fits reuse the traced function. The time is fit()'s wall time, its set-up of
    each call (the arrays wrapped in a tf.data pipeline, shuffled each epoch) included. Keras'
    "auto" leaves XLA off on a CPU, as the tutorial ran."""
    import keras
    from tensorflow.keras import layers, models  # the tutorial's imports
    from tensorflow.keras.utils import to_categorical

    train_images, train_labels = train_arrays(data)  # mnist.load_data()'s training arrays
    model = models.Sequential()
    # input_shape= as printed: Keras 3 warns (an Input layer is its new spelling) and obeys
    model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(layers.MaxPooling2D(2, 2))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D(2, 2))
    model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(10, activation="softmax"))
    train_images = train_images.reshape(TRAIN_SIZE, 28, 28, 1)  # the tutorial: 60000
    train_images = train_images.astype("float32") / 255
    train_labels = to_categorical(train_labels)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    batch_size = 64
    per_epoch = math.ceil(TRAIN_SIZE / batch_size)
    epochs, rest = divmod(steps, per_epoch)

    def warm_up() -> None:
        model.fit(train_images[:160], train_labels[:160], epochs=1, batch_size=batch_size,
                  verbose=0)

    def loop() -> None:
        if epochs:
            model.fit(train_images, train_labels, epochs=epochs, batch_size=batch_size, verbose=0)
        if rest:
            model.fit(train_images, train_labels, epochs=1, steps_per_epoch=rest,
                      batch_size=batch_size, verbose=0)

    return Timed(batch_size, warm_up, loop, updates=steps,
                 extra={"keras_version": keras.__version__, "jit_compile": bool(model.jit_compile)})


RECIPES: dict[str, Callable[[int, Path], Timed]] = {
    "softmax-regression": softmax_regression,
    "deep-mnist": deep_mnist,
    "deep-mnist-as-printed": lambda steps, data: deep_mnist(steps, data, as_printed=True),
    "opengenus-cnn": opengenus_cnn,
    "strided-cnn": strided_cnn,
    "keras-cnn": keras_cnn,
}


def threads() -> dict:
    """TensorFlow's thread pools as left: 0 means sized by TensorFlow (one thread per CPU)."""
    return {"cpus": len(os.sched_getaffinity(0)),
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("--steps", type=int, required=True, help="steps (iterations) to time")
    parser.add_argument("--data", type=Path, required=True, help="folder of MNIST's IDX files")
    parser.add_argument("--turns", action="store_true",
                        help="time --steps steps at each 'go' line on stdin (see serve_turns)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps: expected at least 1")

    timed = RECIPES[args.recipe](args.steps, args.data)
    start = time.perf_counter()
    timed.warm_up()
    facts = {"recipe": args.recipe, "steps": args.steps, "batch_size": timed.batch_size,
             "updates": timed.updates, "warmup_seconds": time.perf_counter() - start,
             "tf_version": tf.__version__, **(timed.extra or {}), "threads": threads()}
    if args.turns:
        serve_turns(timed.loop, facts)
        return
    start = time.perf_counter()
    timed.loop()
    print(json.dumps({**facts, "seconds": time.perf_counter() - start}))


def serve_turns(loop: Callable[[], None], facts: dict) -> None:
    """Take turns with another process: print `facts` as a JSON line, then at each "go" line
    on stdin run `loop` (the next N steps: the batches and weights go on from the last turn)
    and print its seconds as a JSON line; end at the end of stdin."""
    print(json.dumps(facts), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            raise SystemExit(f"tutorial_speed_tf: expected 'go' on stdin, got {line.strip()!r}")
        start = time.perf_counter()
        loop()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
