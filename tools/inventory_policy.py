#!/usr/bin/env python3
"""Transport policy for Windows inventories: fail on settings that send credentials or commands
unprotected. Checks every YAML file of each inventory directory (hosts, group_vars, host_vars):

  cert-validation   *_cert_validation: ignore (a man in the middle gets the credentials)
  basic-over-http   Basic auth with the http scheme/protocol or port 5985
  unencrypted       message encryption "never", or AllowUnencrypted anywhere
  credssp-version   CredSSP without *_credssp_minimum_version: 5 (older CredSSP is CVE-2018-0886)
  psrp-timeouts     ansible_psrp_read_timeout not above ansible_psrp_operation_timeout (every output poll
                    that waits the whole operation would end as a lost connection), or the operation timeout
                    above ansible_psrp_connection_timeout (unset: the plugin's defaults 30, 20, 30)

An inventory whose group_vars/all sets `inventory_lab: true` is a lab: reported, not failed.
Usage: inventory_policy.py DIR...  (an inventory, or a directory of inventories)   (exit 1 on a violation)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def walk(node, path=()):
    """(key path, value) of every scalar in a YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, (*path, str(i)))
    else:
        yield path, node


def settings(inventory: Path) -> list[tuple[str, str, object]]:
    """(file, key, value) for every scalar setting in the inventory's YAML files."""
    found = []
    for f in sorted(p for p in inventory.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()):
        try:
            docs = list(yaml.safe_load_all(f.read_text()))
        except yaml.YAMLError:
            continue  # vault-encrypted or not YAML: ansible itself reports those
        for doc in docs:
            for path, value in walk(doc):
                found.append((str(f), path[-1] if path else "", value))
    return found


def violations(inventory: Path) -> list[str]:
    items = settings(inventory)

    def values(*keys):
        return [(f, k, str(v).lower()) for f, k, v in items if k in keys]

    out = []
    for f, k, v in values("ansible_winrm_server_cert_validation", "ansible_psrp_cert_validation"):
        if v == "ignore":
            out.append(f"{f}: {k}: ignore [cert-validation]")
    http = [x for x in values("ansible_winrm_scheme", "ansible_psrp_protocol") if x[2] == "http"] + \
        [x for x in values("ansible_port") if x[2] == "5985"]
    for f, k, v in values("ansible_winrm_transport", "ansible_psrp_auth"):
        if "basic" in v and http:
            out.append(f"{f}: {k}: {v} with {http[0][1]}: {http[0][2]} ({http[0][0]}) [basic-over-http]")
    for f, k, v in values("ansible_winrm_message_encryption", "ansible_psrp_message_encryption"):
        if v == "never":
            out.append(f"{f}: {k}: never [unencrypted]")
    for f, k, v in items:
        if "allowunencrypted" in f"{k} {v}".lower().replace(" ", "") and "false" not in str(v).lower():
            out.append(f"{f}: {k} mentions AllowUnencrypted [unencrypted]")
    minimum = {v for _, _, v in values("ansible_winrm_credssp_minimum_version", "ansible_psrp_credssp_minimum_version")}
    for f, k, v in values("ansible_winrm_transport", "ansible_psrp_auth"):
        if "credssp" in v and "5" not in minimum:
            out.append(f"{f}: {k}: credssp without *_credssp_minimum_version: 5 [credssp-version]")
    timeout = {k: int(v) for _, k, v in values("ansible_psrp_read_timeout", "ansible_psrp_operation_timeout",
                                                 "ansible_psrp_connection_timeout") if v.isdigit()}
    read, operation, connect = (timeout.get(f"ansible_psrp_{k}_timeout", d)
                                for k, d in (("read", 30), ("operation", 20), ("connection", 30)))
    if items and any(k.startswith("ansible_psrp_") for _, k, _ in items) and not connect >= operation < read:
        out.append(f"ansible_psrp_read_timeout {read} must be above ansible_psrp_operation_timeout {operation}, "
                   f"which must not be above ansible_psrp_connection_timeout {connect} [psrp-timeouts]")
    return out


def is_lab(inventory: Path) -> bool:
    return any(k == "inventory_lab" and v is True for f, k, v in settings(inventory)
               if "/group_vars/all" in f.replace("\\", "/"))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for arg in map(Path, argv):
        # An inventory directory, or a directory of them (inventory/ holds local, prod, ...).
        own = any((arg / n).exists() for n in ("hosts.yml", "hosts.yaml", "hosts", "group_vars"))
        for inventory in [arg] if own else sorted(p for p in arg.iterdir() if p.is_dir()):
            found = violations(inventory)
            if found and is_lab(inventory):
                print(f"{inventory}: lab inventory (inventory_lab: true), not enforced:", *found, sep="\n  ")
            elif found:
                failed = True
                print(f"{inventory}: insecure Windows transport:", *found, sep="\n  ", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
