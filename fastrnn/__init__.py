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
    TimeDelay                 time-delay (TDNN) layer: causal dilated 1-D convolution over time
    NARX                      nonlinear autoregressive model with exogenous inputs
                              (open-loop training, closed-loop forecast)
    Seq2Seq                   encoder-decoder: teacher forcing, greedy decoding
    LayerNormLSTM, ZoneoutLSTM layer-normalised LSTM (Haste) and zoneout, compiled kernels
    lnlstm_reference          the NumPy oracle of LayerNormLSTM / ZoneoutLSTM
    Trainer                   fit(...): epochs, truncated BPTT, clipping, validation, metrics,
                              early stopping, checkpoints, progress bar, history
    data                      ArrayLoader, pad_sequences, CharVocab, StreamBatcher, batchify
    io                        save/load a whole model to one file (format "fastrnn-model")
    demo                      `fastrnn demo`: a character LSTM language model (not imported
                              by `import fastrnn`)
"""
from . import reference
from ._config import show_config
from ._threads import get_num_threads, set_num_threads
from .layers import GRU, LSTM, RNN
from . import init, losses, nn, optim
from .losses import CrossEntropyLoss, MSELoss
from .nn import (Dropout, Embedding, LanguageModel, Linear, Sequential, SequenceClassifier,
                 SequenceTagger)
from .timedelay import TimeDelay
from .narx import NARX
from .seq2seq import Seq2Seq
from . import lnlstm_reference
from .lnlstm import LayerNormLSTM, ZoneoutLSTM
from . import data, io
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "reference", "set_num_threads", "get_num_threads",
           "show_config", "__version__",
           "nn", "losses", "optim", "init", "Linear", "Embedding", "Dropout", "Sequential",
           "SequenceClassifier", "SequenceTagger", "LanguageModel", "CrossEntropyLoss",
           "MSELoss",
           "TimeDelay", "NARX", "Seq2Seq",
           "LayerNormLSTM", "ZoneoutLSTM", "lnlstm_reference",
           "Trainer", "data", "io"]
