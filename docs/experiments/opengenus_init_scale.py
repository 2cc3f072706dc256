"""How large OpenGenus' N(0, 1) initialisation makes the deep CNN's first activations.

    python docs/experiments/opengenus_init_scale.py

Builds the deep CNN with OpenGenus' initialisation and with Deep MNIST's, runs the first 256
training images through each (eval mode, no dropout), and prints the spread of the first
convolution's outputs, of the dense layer's pre-activations and of the logits, and the first
cross-entropy loss.
"""

import torch
import torch.nn.functional as F

from mnistlab.data.splits import as_input, load_split
from mnistlab.models import build_model

train = load_split("train")
x, y = as_input(train.images[:256]), train.labels[:256]
for init in ("normal", "truncated-normal"):
    torch.manual_seed(0)
    m = build_model("deep-cnn", init=init).eval()
    with torch.no_grad():
        conv1 = m.conv1(x)
        dense = m.fc1(m.flatten(F.relu(m.pool2(m.conv2(F.relu(m.pool1(conv1)))))))
        logits = m.fc2(F.relu(dense))
    print(f"{init:>16}: conv1 std {conv1.std():.2f}, dense pre-activation std {dense.std():,.0f}, "
          f"logit std {logits.std():,.0f}, first loss {F.cross_entropy(logits, y):,.0f}")
