from .fpn import FPN
from .pafpn import PAFPN  # noqa: F401  (registers PAFPN)

__all__ = ['FPN']
