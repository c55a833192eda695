"""The seed document's CNN for 28x28 grey images, as its author wrote it, with one fix: the size of the
flattened feature map. Two 3x3 convolutions without padding or pooling turn 28x28 into 24x24, so fc1
takes 64 * 24 * 24 inputs; the seed's 64 * 6 * 6 fits no 28x28 image.

    bigmodel train model.name=examples/seed_cnn.py:CNN train.epochs=2
    python -c "import bigmodel; from examples.seed_cnn import CNN; bigmodel.train(model=CNN)"
"""

import torch.nn as nn


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(64 * 24 * 24, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = nn.functional.relu(x)
        x = self.conv2(x)
        x = nn.functional.relu(x)
        x = x.view(-1, 64 * 24 * 24)
        x = self.fc1(x)
        x = nn.functional.relu(x)
        x = self.fc2(x)
        output = nn.functional.log_softmax(x, dim=1)
        return output
