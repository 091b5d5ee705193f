"""fastrnn: fast CPU recurrent neural networks (RNN, LSTM, GRU) for NumPy.

Public API:
    RNN, LSTM, GRU            layers with torch.nn's names, shapes and parameters
    reference                 the plain NumPy implementation the kernels are tested against
    set_num_threads, get_num_threads
    show_config               build and runtime information
"""
from . import reference
from ._config import show_config
from ._threads import get_num_threads, set_num_threads
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "reference", "set_num_threads", "get_num_threads",
           "show_config", "__version__"]
