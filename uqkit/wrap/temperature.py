"""Temperature scaling of a frozen classifier (Guo et al., ICML 2017): ``softmax(z / T)``, argmax unchanged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from uqkit._checks import check_labels, check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.calibration.recalibrate import TemperatureScaler
from uqkit.wrap.base import FrozenWrapper, check_count


class TemperatureWrapper(FrozenWrapper, method="temperature"):
    """A frozen classifier whose logits are divided by one temperature fitted on held-out data.

    Args:
        model: the frozen classifier (outputs logits ``[N, C]``).
        init: starting temperature.
        max_iter: LBFGS iterations on the validation NLL.
        batch_size: rows per frozen forward pass while fitting.
    """

    def __init__(self, model: nn.Module, *, init: float = 1.5, max_iter: int = 200, batch_size: int = 256) -> None:
        super().__init__(model)
        self.init = check_positive(init, "init")
        self.max_iter = check_count(max_iter, "max_iter")
        self.batch_size = check_count(batch_size, "batch_size")
        self.scaler_ = TemperatureScaler(init=init, max_iter=max_iter)

    @property
    def temperature_(self) -> float:
        """The fitted temperature ``T``."""
        self._require_fitted()
        return self.scaler_.temperature_

    def fit(self, data: object, y: object = None) -> TemperatureWrapper:
        """Fit ``T`` on held-out ``(x, y)`` (never the training data)."""
        run = self._collect(data, y, batch_size=self.batch_size, need_target=True)
        num_classes = run.output.shape[-1] if run.output.ndim >= 2 else None
        labels = check_labels(run.target, "y", num_classes=num_classes, length=len(run.output))
        self.scaler_.fit(run.output, labels)
        self.fitted_ = True
        return self

    def _predictive(self, output: Tensor, features: Tensor | None) -> Predictive:
        return self.scaler_.transform(output)

    def _fitted_tensors(self) -> dict[str, Tensor]:
        return {"temperature": torch.tensor(self.scaler_.temperature_, dtype=torch.float64)}

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        self.scaler_.temperature_ = float(tensors["temperature"])
