"""What a benchmark ran on: CPU cores, GPU, library versions, date."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    """A record of the machine and the libraries, stored beside every benchmark figure."""
    import numpy
    import PIL
    import torch

    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        # the OS kernel: sandboxes differ (a gVisor 4.4.0 against a Firecracker VM's own), and with it the cost
        # of each system call a loader makes (pread, fork, shared memory)
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": getattr(PIL, "__version__", "?"),
        "pillow_simd": "post" in getattr(PIL, "__version__", ""),  # pillow-simd versions end in .postN
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import nvidia.dali as dali

        info["dali"] = dali.__version__
    except ImportError:
        info["dali"] = None
    return info
