"""The temperature wrapper is `TemperatureScaler` on the frozen logits, with an unchanged argmax."""

from __future__ import annotations

import torch

from uqkit.calibration.recalibrate import TemperatureScaler
from uqkit.wrap import wrap


def test_matches_temperature_scaler_on_frozen_logits(classifier, blobs, generator):
    x, y = blobs
    wrapped = wrap(classifier, "temperature", init=1.2, max_iter=100).fit(x, y)
    scaler = TemperatureScaler(init=1.2, max_iter=100).fit(classifier(x), y)
    assert wrapped.temperature_ == scaler.temperature_
    x_new = torch.randn(25, x.shape[1], generator=generator)
    out = wrapped(x_new)
    torch.testing.assert_close(out.predictive.probs, torch.softmax(out.output / scaler.temperature_, -1).unsqueeze(0),
                               rtol=1e-12, atol=1e-14)
    assert torch.equal(out.predictive.mixture_probs().argmax(-1), out.output.argmax(-1))
    torch.testing.assert_close(wrapped.ood_score(x_new), out.predictive.entropy())
