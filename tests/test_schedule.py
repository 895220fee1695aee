"""§5's schedule: lr divided by 10 when validation error stops improving, at most three times."""

import pytest

from alexrepro.recipe import ScheduleConfig
from alexrepro.training.schedule import LRSchedule, PlateauState, plateau_step, step_reductions


def test_plateau_divides_after_patience_epochs_without_improvement():
    s = LRSchedule(ScheduleConfig(kind="plateau", patience=2, threshold=0.01, factor=0.1, max_reductions=3), 0.01)
    errors = [0.9, 0.8, 0.795, 0.80, 0.70, 0.70, 0.70, 0.70, 0.70]
    lrs, reduced = [], []
    for e, err in enumerate(errors):
        reduced.append(s.epoch_end(e, err))
        lrs.append(s.lr)
    # 0.795 is not an improvement by 0.01 (bad 1), 0.80 bad 2 -> reduce; 0.70 improves; then 2 bad -> reduce ...
    assert reduced == [False, False, False, True, False, False, True, False, True]
    assert lrs[3] == pytest.approx(0.001) and lrs[6] == pytest.approx(0.0001) and lrs[8] == pytest.approx(1e-5)


def test_plateau_stops_after_max_reductions():
    st = PlateauState()
    for _ in range(50):
        st = plateau_step(st, 0.5, patience=1, threshold=0.0, max_reductions=3)
    assert st.reductions == 3  # §5: "reduced three times prior to termination"


def test_step_schedule_and_state_dict_keep_the_new_base_lr():
    cfg = ScheduleConfig(kind="step", milestones=[2, 4], factor=0.1)
    assert [step_reductions(d, [2, 4]) for d in range(6)] == [0, 0, 1, 1, 2, 2]
    s = LRSchedule(cfg, 0.01)
    for e in range(3):
        s.epoch_end(e, 0.5)
    assert s.lr == pytest.approx(0.001)
    resumed = LRSchedule(cfg, 0.05)  # resumed with a new base lr: 0.05 × 0.1, not the saved 0.001
    resumed.load_state_dict(s.state_dict())
    assert resumed.lr == pytest.approx(0.005) and resumed.epochs_done == 3
