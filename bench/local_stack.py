"""Moved to iris_devstack.private_stack; the names the benchmark imports from here, until its
modules import them from there."""

from iris_devstack.private_stack import PrivateStack as BenchStack
from iris_devstack.supervisor import SUPERVISORD_CONF, program_section

__all__ = ["SUPERVISORD_CONF", "BenchStack", "program_section"]
