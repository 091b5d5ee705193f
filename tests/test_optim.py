"""fastrnn.optim: parameter trajectories against torch.optim on the same gradients,
schedulers against torch.optim.lr_scheduler, clipping against torch.nn.utils,
and the API (models vs pairs, groups, state dicts, read-only parameters)."""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import nn, optim


def _torch():
    return pytest.importorskip("torch")


SHAPES = {"w": (4, 3), "b": (4,), "v": (2, 2, 2)}


def _initial(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grad_sequence(steps, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
            for _ in range(steps)]


def run_both(ours_cls, torch_name, kwargs, steps=10, dtype=np.float64, scheduler=None):
    """Apply the same gradient sequence with both libraries; return both trajectories."""
    torch = _torch()
    init = _initial(dtype=dtype)
    grads_seq = _grad_sequence(steps, dtype=dtype)
    params = {k: v.copy() for k, v in init.items()}
    grads = {k: np.zeros_like(v) for k, v in init.items()}
    opt = ours_cls(list(params.items()), grads=grads, **kwargs)
    t_params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    t_opt = getattr(torch.optim, torch_name)(list(t_params.values()), **kwargs)
    sched = t_sched = None
    if scheduler is not None:
        sched = getattr(optim, scheduler[0])(opt, **scheduler[1])
        t_sched = getattr(torch.optim.lr_scheduler, scheduler[0])(t_opt, **scheduler[1])
    ours, theirs = [], []
    for step_grads in grads_seq:
        for k, g in step_grads.items():
            grads[k][...] = g
            t_params[k].grad = torch.from_numpy(g.copy())
        opt.step()
        t_opt.step()
        if sched is not None:
            sched.step()
            t_sched.step()
            assert sched.get_last_lr() == pytest.approx(t_sched.get_last_lr(), rel=1e-14)
        ours.append({k: v.copy() for k, v in params.items()})
        theirs.append({k: v.detach().numpy().copy() for k, v in t_params.items()})
    return ours, theirs, opt, t_opt


def assert_trajectories(ours, theirs, rtol=1e-10, atol=1e-12):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol,
                                       err_msg=f"step {step}, {k}")


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True),
    dict(lr=0.05, momentum=0.5, maximize=True),
]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=lambda k: ",".join(f"{a}={b}"
                                                                       for a, b in k.items()))
def test_sgd_matches_torch(kwargs):
    ours, theirs, _, _ = run_both(optim.SGD, "SGD", kwargs)
    assert_trajectories(ours, theirs)


ADAM_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.02, weight_decay=0.05, amsgrad=True),
    dict(lr=0.01, maximize=True),
    dict(lr=0.01, betas=(0.3, 0.9)),          # 1 - beta1 >= 0.5: the other lerp branch
]


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_adamw_match_torch(name, kwargs):
    ours, theirs, opt, t_opt = run_both(getattr(optim, name), name, kwargs)
    assert_trajectories(ours, theirs)
    # moments too
    t_state = list(t_opt.state.values())
    for (k, entry), t_entry in zip(opt.state.items(), t_state):
        assert entry["step"] == t_entry["step"].item()
        np.testing.assert_allclose(entry["exp_avg"], t_entry["exp_avg"].numpy(), rtol=1e-10)
        np.testing.assert_allclose(entry["exp_avg_sq"], t_entry["exp_avg_sq"].numpy(),
                                   rtol=1e-10)


def test_adamw_default_weight_decay_matches_torch():
    ours, theirs, opt, _ = run_both(optim.AdamW, "AdamW", dict(lr=0.05))
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    assert_trajectories(ours, theirs)


def test_float32_params_stay_float32_and_track_torch():
    ours, theirs, _, _ = run_both(optim.Adam, "Adam", dict(lr=0.01), dtype=np.float32)
    assert ours[-1]["w"].dtype == np.float32
    assert_trajectories(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheduler", [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=4, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=3)),
], ids=lambda s: s[0] + str(s[1]))
def test_schedulers_match_torch(scheduler):
    ours, theirs, _, _ = run_both(optim.SGD, "SGD", dict(lr=0.1, momentum=0.9), steps=12,
                                  scheduler=scheduler)
    assert_trajectories(ours, theirs)


def test_lambda_lr_matches_torch_and_state_dict():
    torch = _torch()
    fn = lambda epoch: 1.0 / (1 + epoch) if epoch > 2 else (epoch + 1) / 3  # noqa: E731
    params = _initial()
    opt = optim.Adam(list(params.items()), lr=0.3, grads={k: np.zeros_like(v)
                                                         for k, v in params.items()})
    t_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.3)
    sched, t_sched = optim.LambdaLR(opt, fn), torch.optim.lr_scheduler.LambdaLR(t_opt, fn)
    for _ in range(6):
        opt.step()
        t_opt.step()
        sched.step()
        t_sched.step()
        assert sched.get_last_lr() == pytest.approx(t_sched.get_last_lr(), rel=1e-15)
    state = sched.state_dict()
    assert state["last_epoch"] == 6 and state["lr_lambdas"] == [None]
    opt2 = optim.Adam(list(_initial().items()), lr=0.3)
    opt2.load_state_dict(opt.state_dict())
    sched2 = optim.LambdaLR(opt2, fn, last_epoch=state["last_epoch"] - 1)
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_scheduler_resume_with_cosine_matches_continuous_run():
    params = _initial()
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt = optim.SGD(list(params.items()), lr=1.0, grads=grads)
    sched = optim.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    for _ in range(3):
        sched.step()
    expected = sched.get_last_lr()
    opt2 = optim.SGD(list(_initial().items()), lr=1.0, grads=grads)
    opt2.load_state_dict(saved_opt)
    sched2 = optim.CosineAnnealingLR(opt2, T_max=10)
    sched2.load_state_dict(saved_sched)
    for _ in range(3):
        sched2.step()
    assert sched2.get_last_lr() == pytest.approx(expected, rel=1e-14)
    assert math.isclose(expected[0], 0.5 * (1 + math.cos(math.pi * 7 / 10)), rel_tol=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = _torch()
    grads = _grad_sequence(1, seed=5)[0]
    t_params = []
    for g in grads.values():
        p = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        p.grad = torch.from_numpy(g.copy())
        t_params.append(p)
    t_total = torch.nn.utils.clip_grad_norm_(t_params, max_norm, norm_type=norm_type)
    total = optim.clip_grad_norm_(grads, max_norm, norm_type=norm_type)
    assert total == pytest.approx(t_total.item(), rel=1e-13)
    for g, p in zip(grads.values(), t_params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-13)


def test_clip_grad_norm_on_model_and_value_clip():
    torch = _torch()
    model = nn.SequenceClassifier.build(3, 4, input_size=2, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    for g in model.grads.values():
        g[...] = rng.standard_normal(g.shape) * 3
    t_params = []
    for g in model.grads.values():
        p = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        p.grad = torch.from_numpy(g.copy())
        t_params.append(p)
    total = optim.clip_grad_norm_(model, 1.0)
    t_total = torch.nn.utils.clip_grad_norm_(t_params, 1.0)
    assert total == pytest.approx(t_total.item(), rel=1e-13)
    new_norm = math.sqrt(sum(float(np.sum(g * g)) for g in model.grads.values()))
    assert new_norm == pytest.approx(1.0 / (1 + 1e-6 / total), rel=1e-12)
    for g, p in zip(model.grads.values(), t_params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-13)
    optim.clip_grad_value_(model, 0.01)
    torch.nn.utils.clip_grad_value_(t_params, 0.01)
    for g, p in zip(model.grads.values(), t_params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-13)
        assert np.abs(g).max() <= 0.01
    assert optim.clip_grad_norm_([], 1.0) == 0.0
    bad = {"a": np.array([np.nan, 1.0])}
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(bad, 1.0, error_if_nonfinite=True)


# -- API -------------------------------------------------------------------------

def _tiny_model(seed=0):
    return nn.SequenceClassifier.build(3, 4, vocab_size=6, seed=seed, dtype="float64",
                                       n_threads=1)


def _loss_and_backward(model, seed=0):
    from fastrnn.losses import CrossEntropyLoss
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 6, (5, 3))
    ce = CrossEntropyLoss()
    loss = ce(model(tokens), np.array([0, 1, 2]))
    model.backward(ce.backward())
    return loss


def test_model_source_equals_pairs_source():
    a, b = _tiny_model(), _tiny_model()
    opt_a = optim.Adam(a, lr=0.01)
    opt_b = optim.Adam(b.named_parameters(), lr=0.01, grads=b.grads)
    for step in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _loss_and_backward(model, step)
            opt.step()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=na)
    assert not any(g.any() for g in (opt_a.zero_grad() or a.grads).values())


def test_model_source_survives_recurrent_load_state_dict():
    """The recurrent layers REPLACE their arrays in load_state_dict: an optimiser
    built from the model follows (it looks parameters up by name)."""
    model = _tiny_model()
    opt = optim.SGD(model, lr=0.1)
    model.load_state_dict(_tiny_model(seed=5).state_dict())
    _loss_and_backward(model)
    before = model.rnn.weight_hh_l0.copy()
    opt.step()
    assert not np.array_equal(model.rnn.weight_hh_l0, before)


def test_param_groups_and_hyperparameters():
    model = _tiny_model()
    opt = optim.SGD([{"params": model.rnn, "lr": 0.5},
                     {"params": list(model.head.named_parameters())},
                     ], lr=0.1, momentum=0.9, grads=model.head.grads)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert opt.param_groups[0]["params"][0] == "weight_ih_l0"
    assert opt.param_groups[1]["momentum"] == 0.9
    _loss_and_backward(model)
    emb = model.embed.weight.copy()
    opt.step()
    np.testing.assert_array_equal(model.embed.weight, emb)     # not in any group
    with pytest.raises(ValueError, match="more than one group"):
        opt.add_param_group({"params": list(model.head.named_parameters())})
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        optim.SGD([{"params": model, "lrr": 1}])


def test_step_with_explicit_grads_and_missing_grads():
    params = _initial()
    opt = optim.SGD(list(params.items()), lr=1.0)
    with pytest.raises(ValueError, match="no gradients"):
        opt.step()
    w = params["w"].copy()
    opt.step(grads={k: np.ones_like(v) for k, v in params.items()})
    np.testing.assert_array_equal(params["w"], w - 1)
    opt.step(grads={"w": None, "b": np.ones(4), "v": np.ones((2, 2, 2))})   # None: skipped
    np.testing.assert_array_equal(params["w"], w - 1)
    with pytest.raises(KeyError, match="no gradient"):
        opt.step(grads={"w": np.ones((4, 3))})
    with pytest.raises(ValueError, match="shape"):
        opt.step(grads={"w": np.ones(3), "b": np.ones(4), "v": np.ones((2, 2, 2))})


def test_read_only_parameters_in_eval_raise_clearly():
    model = nn.SequenceClassifier.build(3, 4, vocab_size=6, seed=0)    # float32, packed eval
    opt = optim.Adam(model, lr=0.01)
    model.eval()
    model(np.zeros((3, 2), dtype=int))                # packs the weights: read-only
    assert not model.rnn.weight_hh_l0.flags.writeable
    before = model.head.weight.copy()
    with pytest.raises(RuntimeError, match=r"read-only.*train\(\)"):
        opt.step()
    np.testing.assert_array_equal(model.head.weight, before)   # nothing half-updated
    model.train()
    opt.step()


def test_optimizer_state_dict_round_trip():
    a = _tiny_model()
    opt = optim.Adam(a, lr=0.01, amsgrad=True)
    for step in range(2):
        opt.zero_grad()
        _loss_and_backward(a, step)
        opt.step()
    b = _tiny_model()
    b.load_state_dict(a.state_dict())
    opt_b = optim.Adam(b, lr=0.5)
    opt_b.load_state_dict(opt.state_dict())
    assert opt_b.param_groups[0]["lr"] == 0.01
    saved = opt.state_dict()
    saved["state"]["head.bias"]["exp_avg"][...] = 123     # a copy: no aliasing
    assert not np.any(opt.state["head.bias"]["exp_avg"] == 123)
    for model, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        _loss_and_backward(model, 7)
        o.step()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=n)
    with pytest.raises(ValueError, match="different parameter names"):
        optim.Adam(a.head).load_state_dict(opt.state_dict())


def test_invalid_hyperparameters():
    params = list(_initial().items())
    with pytest.raises(ValueError):
        optim.SGD(params, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(params, betas=(1.0, 0.9))
    with pytest.raises(TypeError):
        optim.SGD([("w", [1, 2])])
    with pytest.raises(TypeError):
        optim.StepLR("not an optimiser", 2)
    with pytest.raises(TypeError, match="named"):
        optim.Adam(_tiny_model().parameters())          # torch habit: bare arrays
    gen = ((k, v) for k, v in params)                    # a generator of pairs is fine
    assert optim.SGD(gen, lr=0.1).param_groups[0]["params"] == ["w", "b", "v"]


def test_torch_style_loop_with_recurrent_layer_alone():
    """The raw layers work as optimiser sources too (named_parameters + grads)."""
    lstm = fastrnn.LSTM(2, 3, dtype="float64", seed=0)
    opt = optim.SGD(lstm, lr=0.1)
    x = np.ones((4, 1, 2))
    out, _ = lstm(x)
    lstm.backward(np.ones_like(out))
    before = lstm.weight_ih_l0.copy()
    opt.step()
    np.testing.assert_allclose(lstm.weight_ih_l0, before - 0.1 * lstm.grads["weight_ih_l0"])
    opt.zero_grad()
    assert not lstm.grads["weight_ih_l0"].any()
