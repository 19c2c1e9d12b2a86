"""Networks: the xLSTM layers and stack, the Transformer path, fusion and heads."""

from mlmodels.nets.mlstm import MLSTMLayer, MLSTMState, mlstm_chunk, mlstm_parallel
from mlmodels.nets.slstm import SLSTMLayer, SLSTMState, slstm_scan
from mlmodels.nets.xlstm import MLSTMBlock, SLSTMBlock, XLSTMStack

__all__ = [
    "MLSTMBlock",
    "MLSTMLayer",
    "MLSTMState",
    "SLSTMBlock",
    "SLSTMLayer",
    "SLSTMState",
    "XLSTMStack",
    "mlstm_chunk",
    "mlstm_parallel",
    "slstm_scan",
]
