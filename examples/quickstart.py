"""Decode a small batch with several policies on the test kit's toy denoiser and compare NFE."""

import unmask
from unmask.testing import FakeDenoiser

model = FakeDenoiser()
prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
for policy in ["topk", "threshold:tau=0.9", "threshold:tau=0.7", "entropy_bound:bound=0.5"]:
    result = unmask.decode(model, prompts, gen_length=32, block_length=8, policy=policy, stop="eotp")
    print(f"{policy:<26} NFE per row {result.nfe.tolist()}  answer lengths {result.answer_lengths.tolist()}")
