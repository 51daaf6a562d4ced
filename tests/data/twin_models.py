"""The PyTorch twin model of the C++ checkpoint tests (module names block.q, block.v, block.fc, classifier)."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.v = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 24)

    def forward(self, x):
        return torch.relu(self.fc(self.q(x) + self.v(x)))


class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.classifier = nn.Linear(24, 3)

    def forward(self, x):
        return self.classifier(self.block(x))
