"""The SID of a Windows service's virtual account, computed on the controller.

`NT SERVICE\\<name>` can only be resolved by name once the service exists; its SID is fixed by the name
(S-1-5-80- followed by the SHA-1 of the upper-cased name in UTF-16LE, as five little-endian 32-bit
numbers), so ACLs can name it before the service is created (and in check mode on a fresh host).
"""

from __future__ import annotations

import hashlib
import struct


def win_service_sid(name):
    digest = hashlib.sha1(str(name).upper().encode("utf-16-le")).digest()  # noqa: S324 - the SID scheme
    return "S-1-5-80-" + "-".join(str(n) for n in struct.unpack("<5I", digest))


class FilterModule:
    def filters(self):
        return {"win_service_sid": win_service_sid}
