"""FedBN (Li et al. 2021, "FedBN: federated learning on non-IID features via local batch normalization"):
hospitals whose images differ in their features (scanners, staining, contrast) keep their own
normalisation layers, and only the rest of the model is shared.

The round's training settings ask for it (``TrainSettings.local_normalization``): after its first
round each hospital loads its own normalisation layers, kept in its data folder, over the global
model's before it evaluates and trains, so its model is the federation's shared layers with its own
normalisation. The coordinator averages every tensor as FedAvg does; the averaged normalisation layers
are used by nobody but the coordinator's own test-set evaluation and the final model file, which say
so (``EVALUATION``): a hospital's accuracy with its own layers is in its reported validation metrics.
"""

from __future__ import annotations

from medfed.server.strategy.fedavg import FedAvg

EVALUATION = "the coordinator's test set is evaluated with the hospitals' averaged normalisation layers"


class FedBN(FedAvg):
    name = "fedbn"

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "evaluation": EVALUATION}
