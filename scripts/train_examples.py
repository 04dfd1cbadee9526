"""Train the example models on scikit-learn's bundled data sets and write ``weights/``.

Reproducible: fixed seeds (set before any module is built, so initial weights too), one
torch thread, deterministic algorithms, the same held-out split the tests use
(``registry.examples.data``); the bytes can still differ between CPUs, whose float
kernels differ in their last bits. Prints each model's held-out score and rewrites the
``sha256`` lines of ``models.yaml`` so the manifest matches the new files.

    make weights        # or: python scripts/train_examples.py
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from registry.examples.data import Split, diabetes_split, digits_split
from registry.examples.diabetes import DiabetesRegressor
from registry.examples.digits import DigitsCNN, DigitsLinear, DigitsMLP
from registry.weightfiles import file_sha256

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"
MANIFEST = ROOT / "models.yaml"
SEED = 0


def train(
    module: nn.Module,
    split: Split,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    reshape: tuple[int, ...] = (),
    probabilities: bool = False,
) -> nn.Module:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(split.x_train)
    x = x.reshape(len(x), *reshape) if reshape else x
    y = torch.from_numpy(split.y_train)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-4)
    module.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(32):
            optimiser.zero_grad()
            output = module(x[batch])
            # NOTE: the classifiers end in softmax for clients; train on its log.
            output = torch.log(output.clamp_min(1e-12)) if probabilities else output
            loss_fn(output, y[batch]).backward()
            optimiser.step()
    return module.eval()


def predict(module: nn.Module, x: np.ndarray, reshape: tuple[int, ...] = ()) -> np.ndarray:
    tensor = torch.from_numpy(x)
    with torch.inference_mode():
        output: torch.Tensor = module(tensor.reshape(len(tensor), *reshape) if reshape else tensor)
    return output.numpy()


def accuracy(module: nn.Module, split: Split, reshape: tuple[int, ...] = ()) -> float:
    predicted = predict(module, split.x_test, reshape).argmax(axis=1)
    return float((predicted == split.y_test).mean())


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)  # NOTE: the first module is built before train() seeds
    scores: dict[str, dict[str, float]] = {}
    digits = digits_split()
    nll = nn.NLLLoss()

    linear = train(DigitsLinear(), digits, nll, epochs=60, lr=0.01, probabilities=True)
    (WEIGHTS / "digits/1").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is still a format
        torch.jit.save(torch.jit.script(linear), str(WEIGHTS / "digits/1/model.pt"))
    scores["digits:1"] = {"accuracy": accuracy(linear, digits)}

    mlp = train(DigitsMLP(hidden=128), digits, nll, epochs=60, lr=0.003, probabilities=True)
    (WEIGHTS / "digits/2").mkdir(parents=True, exist_ok=True)
    save_file(mlp.state_dict(), str(WEIGHTS / "digits/2/model.safetensors"))
    scores["digits:2"] = {"accuracy": accuracy(mlp, digits)}

    image = (1, 8, 8)
    cnn = train(
        DigitsCNN(channels=16), digits, nll, epochs=30, lr=0.003, reshape=image, probabilities=True
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(cnn, (torch.zeros(2, *image),), dynamic_shapes=({0: batch},))
    (WEIGHTS / "digits-cnn/1").mkdir(parents=True, exist_ok=True)
    torch.export.save(program, WEIGHTS / "digits-cnn/1/model.pt2")
    scores["digits-cnn:1"] = {"accuracy": accuracy(cnn, digits, image)}

    diabetes = diabetes_split()
    regressor = DiabetesRegressor(hidden=32)
    target_mean, target_std = float(diabetes.y_train.mean()), float(diabetes.y_train.std())
    regressor.target_mean.fill_(target_mean)
    regressor.target_std.fill_(target_std)
    scaled = Split(
        diabetes.x_train,
        diabetes.x_test,
        ((diabetes.y_train - diabetes.y_train.mean()) / diabetes.y_train.std()).astype(np.float32),
        diabetes.y_test,
    )

    def scaled_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss((output.squeeze(1) - target_mean) / target_std, target)

    train(regressor, scaled, scaled_mse, epochs=40, lr=0.001)
    (WEIGHTS / "diabetes/1").mkdir(parents=True, exist_ok=True)
    torch.save(regressor.state_dict(), WEIGHTS / "diabetes/1/model.pt")
    residual = predict(regressor, diabetes.x_test)[:, 0] - diabetes.y_test
    scores["diabetes:1"] = {
        "mae": float(np.abs(residual).mean()),
        "rmse": float(np.sqrt((residual**2).mean())),
        "r2": float(
            1 - (residual**2).sum() / ((diabetes.y_test - diabetes.y_test.mean()) ** 2).sum()
        ),
    }

    for path in WEIGHTS.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # NOTE: safetensors writes 0600; a non-root server must read it
    (WEIGHTS / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    update_checksums()
    print(json.dumps(scores, indent=2))


def update_checksums() -> None:
    """Rewrite each ``sha256:`` that follows a ``path:`` line in models.yaml."""
    lines = MANIFEST.read_text(encoding="utf-8").splitlines(keepends=True)
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)path:\s*(\S+)", line)
        if match and index + 1 < len(lines) and "sha256:" in lines[index + 1]:
            indent = match.group(1)
            digest = file_sha256(WEIGHTS / match.group(2))
            lines[index + 1] = f"{indent}sha256: {digest}\n"
    MANIFEST.write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
