"""The command line's argument types and the arguments several commands share: each type names the rule a
bad value breaks, in one line (argparse's ``error: argument --n: must be a positive integer, got '0'``)."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

COMPONENT_HELP = "a registered name with optional parameters, e.g. 'threshold:tau=0.9'; 'a + b' combines"


class Parser(argparse.ArgumentParser):
    """Bad arguments get one line naming the argument (and a pointer to --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _converted(text: str, convert: Any, what: str) -> Any:
    """``convert(text)``, or argparse's error saying the value must be ``what``."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _converted(text, int, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    value = _converted(text, float, "a number")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def seed_value(text: str) -> int:
    from unmask.core.types import SEED_MAX

    value = _converted(text, int, "an integer")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64), got {text}")
    return value


def score_levels(text: str) -> tuple[float, ...]:
    """Comma-separated mean scores in [0, 100] (PBx levels), e.g. ``90,80,70,60``."""
    levels = tuple(_converted(part.strip(), float, "comma-separated scores in [0, 100]") for part in text.split(","))
    if not all(0 <= level <= 100 for level in levels):
        raise argparse.ArgumentTypeError(f"must be comma-separated scores in [0, 100], got {text!r}")
    return levels


def positive_float(text: str) -> float:
    value = _converted(text, float, "a number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = _converted(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def task_list(text: str) -> list[str]:
    from unmask.contrib.tasks import TASKS

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("must name at least one task (comma-separated)")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    return names


def torch_device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch {torch.__version__}); "
                                         "use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: unmask runs on cpu, cuda or mps")
    return text


def prompt_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty")
    return text


def cell_triple(text: str) -> tuple[str, str, str]:
    parts = text.split()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"takes 'POLICY STOP CACHE' (three specs separated by spaces), got {text!r}")
    return (parts[0], parts[1], parts[2])


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a registered model name or a checkpoint directory "
                        "(transformers layout); default: the bundled reference model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own model code")
    parser.add_argument("--download", action="store_true", help="fetch a Hub id that is not in the local Hugging "
                        "Face cache (default: never touch the network)")
    parser.add_argument("--verbose", action="store_true", help="show transformers' weight-loading progress")
    parser.add_argument("--device", type=torch_device, default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32",
                        help="weights' dtype; auto keeps the checkpoint's (default: float32)")
    parser.add_argument("--shift-logits", action=argparse.BooleanOptionalAction, default=None,
                        help="the model predicts position i+1 at column i, like Dream (default: from its config)")


def add_chat_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap prompts in the tokenizer's chat template (default: if it has one)")


def add_decode_arguments(
    parser: argparse.ArgumentParser, *, components: bool = True, seed_flag: str = "--seed"
) -> None:
    if components:
        parser.add_argument("--policy", default="topk", help=f"unmask policy: {COMPONENT_HELP} (default: topk)")
        parser.add_argument("--stop", default=None, help=f"stop criterion, e.g. eotp: {COMPONENT_HELP}")
        parser.add_argument("--cache", default=None, help="KV-cache manager (default: the model's own: exact for "
                            "block-diffusion models, none for the others)")
        parser.add_argument("--constraint", default=None, help="structured output, e.g. \"regex:pattern='[a-z ]+'\" "
                            "(quote values holding , + : = or spaces); default: none")
    parser.add_argument("--gen-length", type=positive_int, default=64, help="tokens to generate (default: 64)")
    parser.add_argument("--block-length", type=positive_int, default=32, help="semi-autoregressive block (default: 32)")
    parser.add_argument("--steps", type=positive_int, default=None, help="schedule steps (default: gen length)")
    parser.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default)")
    parser.add_argument(seed_flag, type=seed_value, default=0, dest="decode_seed",
                        help="seed of the sampling stream (default: 0)")
