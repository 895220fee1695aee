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


def test_a_fresh_schedule_starts_at_the_base_lr_with_nothing_done():
    s = LRSchedule(ScheduleConfig(kind="step", milestones=[1, 3], factor=0.1), 0.01)
    assert s.lr == 0.01 and s.reductions == 0  # milestone 1 is passed only once epoch 0 is done
    assert s.state_dict() == {"kind": "step", "epochs_done": 0, "best": float("inf"), "bad_epochs": 0,
                              "reductions": 0}
    s.epoch_end(0, 0.9)
    assert s.lr == pytest.approx(0.001) and s.state_dict()["epochs_done"] == 1


def test_a_resumed_plateau_schedule_goes_on_as_the_straight_one():
    cfg = ScheduleConfig(kind="plateau", patience=2, threshold=0.01, factor=0.1, max_reductions=3)
    straight = LRSchedule(cfg, 0.01)
    errors = [0.9, 0.8, 0.795, 0.80, 0.70, 0.70, 0.69, 0.70, 0.70]
    for e, err in enumerate(errors[:3]):
        straight.epoch_end(e, err)
    saved = straight.state_dict()
    # best 0.8 (epoch 1), one epoch without improvement by the threshold, no reduction yet
    assert saved == {"kind": "plateau", "epochs_done": 3, "best": 0.8, "bad_epochs": 1, "reductions": 0}
    resumed = LRSchedule(cfg, 0.01)
    resumed.load_state_dict(saved)
    assert resumed.plateau == PlateauState(best=0.8, bad_epochs=1, reductions=0)
    for e, err in enumerate(errors[3:], start=3):
        assert resumed.epoch_end(e, err) == straight.epoch_end(e, err)
        assert resumed.lr == straight.lr and resumed.state_dict() == straight.state_dict()
    assert straight.reductions == 3  # at epochs 3, 6 (0.69 is not 0.01 below 0.70) and 8


def test_a_resumed_schedule_keeps_its_reductions():
    # §5: the lr was divided by 10 twice before the save; the resumed run goes on from 0.01 / 100.
    cfg = ScheduleConfig(kind="plateau", patience=2, threshold=0.01, factor=0.1, max_reductions=3)
    resumed = LRSchedule(cfg, 0.01)
    resumed.load_state_dict({"kind": "plateau", "epochs_done": 40, "best": 0.3, "bad_epochs": 1, "reductions": 2})
    assert resumed.plateau == PlateauState(best=0.3, bad_epochs=1, reductions=2)
    assert resumed.lr == pytest.approx(0.01 / 100)
