"""fastrnn: fast CPU recurrent neural networks (RNN, LSTM, GRU) for NumPy.

Public API:
    RNN, LSTM, GRU            layers with torch.nn's names, shapes and parameters
    reference                 the plain NumPy implementation the kernels are tested against
    set_num_threads, get_num_threads
    show_config               build and runtime information
    nn                        Linear, Embedding, Dropout, ReLU, Tanh, LastStep, MeanPool,
                              Sequential, SequenceClassifier, SequenceTagger, LanguageModel
    losses                    CrossEntropyLoss, MSELoss (loss = f(...); grad = f.backward())
    optim                     SGD, Adam, AdamW, StepLR, ExponentialLR, CosineAnnealingLR,
                              LambdaLR, clip_grad_norm_, clip_grad_value_
    init                      xavier/kaiming/orthogonal initialisers, lstm_forget_bias_
"""
from . import reference
from ._config import show_config
from ._threads import get_num_threads, set_num_threads
from .layers import GRU, LSTM, RNN
from . import init, losses, nn, optim
from .losses import CrossEntropyLoss, MSELoss
from .nn import (Dropout, Embedding, LanguageModel, Linear, Sequential, SequenceClassifier,
                 SequenceTagger)

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "reference", "set_num_threads", "get_num_threads",
           "show_config", "__version__",
           "nn", "losses", "optim", "init", "Linear", "Embedding", "Dropout", "Sequential",
           "SequenceClassifier", "SequenceTagger", "LanguageModel", "CrossEntropyLoss",
           "MSELoss"]
