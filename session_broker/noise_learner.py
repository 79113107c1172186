"""``qiskit_ibm_runtime.noise_learner``'s names. Noise learning is not offered here.

IBM's ``NoiseLearner`` learns the Pauli-Lindblad noise of a device's layers on the device
(for PEA and PEC). The devices here are Aer simulations of fixed calibration snapshots, and
neither PEA nor PEC is built (docs/user-guide.md, mitigation), so a learned noise model
would have no use: ``NoiseLearner(...)`` raises ``NotOfferedError`` at once, saying so,
rather than a guide failing later with ``ModuleNotFoundError`` or an unknown program.
"""

from __future__ import annotations

from session_broker.errors import NotOfferedError

__all__ = ["NoiseLearner", "NotOfferedError"]

WHY = (
    "noise learning (the noise-learner program, NoiseLearner, resilience.layer_noise_learning) is not "
    "offered here: the devices are Aer simulations of fixed calibration snapshots and PEA/PEC, "
    "which use learned noise, are not built. Mitigate with EstimatorV2's resilience_level 1 or 2 "
    "(TREX, ZNE with gate folding, twirling), or read the device's noise from "
    "backend.properties() and AerSimulator.from_backend(backend)"
)


class NoiseLearner:
    """IBM's ``NoiseLearner(mode=None, options=None)``: raises ``NotOfferedError``."""

    def __init__(self, mode=None, options=None):
        raise NotOfferedError(WHY)
