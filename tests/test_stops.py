import torch
from hypothesis import given

from unmask import StepView
from unmask.strategies import EoTPStop, MaxNFEStop
from unmask.testing import committed_views

MASK, EOS = 9, 8


def view(x, x0, confidence, committed, *, gen_start=1, block=(1, 7)):
    x, x0 = torch.tensor([x]), torch.tensor([x0])
    window = torch.zeros_like(x, dtype=torch.bool)
    window[:, block[0]:block[1]] = True
    return StepView(
        x=x, x0=x0, confidence=torch.tensor([confidence], dtype=torch.float64), masked=x == MASK,
        window=window, row_active=torch.tensor([True]), schedule_k=torch.tensor([1]), nfe=torch.tensor([3]),
        committed=torch.tensor([committed]), gen_start=gen_start, block_start=block[0], block_end=block[1],
        mask_token_id=MASK, eos_token_id=EOS,
    )


INF = float("-inf")


def test_committed_eos_wins_at_its_first_position():
    v = view([0, 1, EOS, MASK, EOS, MASK, MASK], [0, 1, EOS, EOS, EOS, 2, EOS],
             [INF, INF, INF, 0.99, INF, 0.5, 0.9], [False, False, True, False, True, False, False])
    assert EoTPStop().check(v).end.tolist() == [2]


def test_most_confident_predicted_eos_otherwise():
    v = view([0, 1, 2, MASK, MASK, MASK, MASK], [0, 1, 2, EOS, 3, EOS, EOS],
             [INF, INF, INF, 0.4, 0.9, 0.8, 0.7], [False, False, True, False, False, False, False])
    assert EoTPStop().check(v).end.tolist() == [5]


def test_never_cuts_before_committed_content():
    # The EOS committed at 2 lies before committed content at 4: only a later EOS may end the answer.
    v = view([0, 1, EOS, MASK, 3, MASK, MASK], [0, 1, EOS, EOS, 3, 4, EOS],
             [INF, INF, INF, 0.99, INF, 0.1, 0.2], [False, False, True, False, False, False, False])
    assert EoTPStop().check(v).end.tolist() == [6]


def test_block_scope_searches_only_the_block():
    v = view([0, 1, 2, MASK, MASK, MASK, MASK], [0, 1, 2, 3, 4, 5, EOS],
             [INF, INF, INF, 0.4, 0.9, 0.8, 0.7], [False, False, True, False, False, False, False], block=(1, 5))
    assert EoTPStop().check(v).end.tolist() == [6]
    assert EoTPStop(scope="block").check(v).end.tolist() == [-1]


@given(v=committed_views())
def test_eotp_end_is_after_all_content(v):
    end = EoTPStop().check(v).end
    columns = torch.arange(v.x.shape[1])[None, :]
    content = (v.x != v.mask_token_id) & (v.x != v.eos_token_id) & (columns >= v.gen_start)
    assert not (content & (columns > end[:, None]) & (end[:, None] >= 0)).any()
    assert not (~v.row_active & (end >= 0)).any()  # rows not decoding this step are left alone


@given(v=committed_views())
def test_max_nfe_is_done_exactly_at_the_budget(v):
    assert MaxNFEStop(n=5).check(v).done.tolist() == (v.nfe >= 5).tolist()
