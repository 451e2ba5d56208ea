"""Peak memory of a decode step's scoring on LLaDA's vocabulary (126,464 tokens), batch 4, a 1024-token
canvas, on CPU: how much the engine adds on top of the model's own logits.

    python benchmarks/scoring_memory.py [--temperature 0] [--out benchmarks/results/scoring_memory.json]

Each temperature is measured in a fresh process: resident memory before the decode, the peak during one
forward and its scoring (``max_nfe:n=1``), and the size of the float32 logits for scale. The model is a tiny
random one (``unmask.testing.FakeDenoiser``, hidden size 16), so the logits dominate everything else.
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

VOCAB, BATCH, PROMPT, GEN = 126_464, 4, 8, 1024


def measure(temperature: float) -> dict:
    """In this process: one decode step, returning the peak resident memory above the starting point."""
    import torch

    from unmask import DecodeConfig, decode
    from unmask.testing import FakeDenoiser

    torch.set_num_threads(2)
    model = FakeDenoiser(vocab_size=VOCAB, hidden_size=16, max_positions=PROMPT + GEN, dtype=torch.float32)
    prompts = torch.randint(VOCAB - 2, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    before = _status("VmRSS")
    result = decode(model, prompts, config=DecodeConfig(gen_length=GEN, block_length=32, temperature=temperature),
                    stop="max_nfe:n=1")
    assert int(result.nfe.max()) == 1
    logits_gb = BATCH * (PROMPT + GEN) * VOCAB * 4 / 2**30
    return {"temperature": temperature, "batch": BATCH, "canvas": PROMPT + GEN, "vocab": VOCAB,
            "logits_gb": round(logits_gb, 2), "peak_above_start_gb": round((_status("VmHWM") - before) / 2**20, 2)}


def _status(field: str) -> int:
    """A /proc/self/status memory field, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperature", type=float, action="append", help="repeatable (default: 0 and 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for temperature in args.temperature or [0.0, 1.0]:
        child = subprocess.run([sys.executable, __file__, "--child", str(temperature)], capture_output=True,
                               text=True, check=True)
        rows.append(json.loads(child.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if args.out:
        from unmask._files import write_text_atomically

        write_text_atomically(args.out, json.dumps({"machine": platform.processor() or platform.machine(),
                                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
