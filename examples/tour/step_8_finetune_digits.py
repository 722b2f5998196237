"""Step 8 - real data: train a zoo ResNet on scikit-learn's digits, then transfer it to a new task.

1,797 real 8x8 handwritten digits (shipped inside scikit-learn: nothing is
downloaded). A zoo resnet18 adapted to 1 input channel learns the 10 digits;
then its backbone is frozen, its head replaced for "is it >= 5?", and only the
head trained. Both models are saved with save_model (and as distributed
checkpoints), the curves and the confusion matrix go to PNG files, and a fresh
process reloads the models and reproduces their predictions exactly.

The same script runs on several processes or machines under torchrun
(DDP or FSDP2): ``make demo-distributed``, docs/distributed.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import finetune_digits  # noqa: E402

OUT = Path("runs/tour-digits")


def main() -> None:
    # fewer epochs than the script's 12 + 3: the tour stays short and still passes 0.95 (docs/distributed.md)
    code = finetune_digits.main(["--out", str(OUT), "--epochs", "8", "--transfer-epochs", "2"])
    if code != 0:
        raise SystemExit(code)
    finetune_digits.console.print(f"look at {OUT}/curves.png and {OUT}/confusion.png")


if __name__ == "__main__":
    main()
