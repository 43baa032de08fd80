"""Named experiments, the runner that trains them, and the report that tabulates them.

The built-in experiments are defined as data in :mod:`.mnist`, :mod:`.omniglot`,
:mod:`.cifar10` and :mod:`.mnist_mcu` and registered here, in the order ``onebit list`` shows
them. Another experiment is one :class:`Experiment` passed to :func:`register`.
"""

from .cifar10 import CIFAR10
from .mnist import MNIST_CNN, MNIST_MLP
from .mnist_mcu import MNIST_MCU
from .omniglot import OMNIGLOT
from .registry import Experiment, Row, get, names, register
from .report import write_report
from .runner import run_experiment

__all__ = ["BUILTIN", "Experiment", "Row", "get", "names", "register", "run_experiment", "write_report"]

#: The experiments onebit ships.
BUILTIN = (MNIST_MLP, MNIST_CNN, OMNIGLOT, CIFAR10, MNIST_MCU)

for _experiment in BUILTIN:
    register(_experiment)
del _experiment
