"""The gateway configuration a simulated shop needs: each machine's MPE (`[machines."<id>"]`, the
bound the simulator draws its CMM errors within) and its OPC UA identification (plainly a
simulated machine: no vendor's name or serial number), and the part catalogue (`[inputs.parts]`,
so a gateway reading dfq, calypso or qif knows each part's material). Used by the launcher and by
`python -m cmm_twin.accuracy`."""

from __future__ import annotations

from collections.abc import Sequence

from cmm_twin.simulator.catalogue import parts_table
from cmm_twin.simulator.machines import DEFAULT_MPE, machines_table


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _table(header: str, entries: dict[str, object]) -> list[str]:
    return [header, *(f"{key} = {_toml_value(value)}" for key, value in entries.items()), ""]


SIMULATED_MANUFACTURER = "cmm-twin simulator"


def simulated_identity(machine: str) -> dict[str, str]:
    """The `[machines."<id>"]` identification keys of a simulated machine (OPC UA Machinery)."""
    return {
        "manufacturer": SIMULATED_MANUFACTURER,
        "model": "simulated CMM",
        "serial_number": f"SIM-{machine}",
        "product_instance_uri": f"urn:cmm-twin:simulator:{machine}",
    }


def gateway_toml(machines: int, mpe: Sequence[tuple[float, float]] = DEFAULT_MPE) -> str:
    """TOML text of `[inputs.parts."<number>"]` for the catalogue and `[machines."<id>"]` for
    `machines` CMMs with the simulator's per-machine MPE (`mpe` cycled over them) and identification."""
    lines: list[str] = []
    for number, entry in parts_table().items():
        lines += _table(f'[inputs.parts."{number}"]', entry)
    for machine, mpe_entry in machines_table(machines, mpe).items():
        lines += _table(f'[machines."{machine}"]', {**mpe_entry, **simulated_identity(machine)})
    return "\n".join(lines)
