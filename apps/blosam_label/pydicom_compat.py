"""Let MONAI Label 0.8.5 start next to pydicom 3: run once in the MONAI Label venv (``python pydicom_compat.py``).

MONAI Label 0.8.5 (the newest on PyPI) imports pydicom-seg 0.4.1 at start-up, which imports
``pydicom._storage_sopclass_uids``, a private module pydicom 3 removed (its UIDs moved to ``pydicom.uid``); blosam_med
needs pydicom 3 (and highdicom with it). The server then fails with ``ModuleNotFoundError: No module named
'pydicom._storage_sopclass_uids'`` (Project-MONAI/MONAILabel issue 1841, razorx89/pydicom-seg issue 60). This writes
that module back into the installed pydicom as a re-export of ``pydicom.uid``; it changes nothing else and does
nothing when the module exists. Reinstalling pydicom removes it: run this again.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

SHIM = '''"""pydicom 2's storage SOP class UIDs, re-exported from pydicom.uid for pydicom-seg 0.4.1 (MONAI Label 0.8.5).

Written by blosam_med's apps/blosam_label/pydicom_compat.py.
"""

from pydicom.uid import *  # noqa: F403
'''


def main() -> int:
    target = Path(pydicom.__file__).with_name("_storage_sopclass_uids.py")
    if target.exists():
        print(f"{target}: present, nothing to do")
        return 0
    target.write_text(SHIM)
    print(f"{target}: written (pydicom {pydicom.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
