import os

import pytest


def pytest_collection_modifyitems(config, items):
    """tests/lab needs root and network namespaces; mark them and skip cleanly without."""
    lab_ok = os.geteuid() == 0 and os.path.exists("/usr/sbin/ip") or os.path.exists("/sbin/ip")
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if not (os.geteuid() == 0 and lab_ok):
                item.add_marker(pytest.mark.skip(reason="lab tests need root and iproute2"))
