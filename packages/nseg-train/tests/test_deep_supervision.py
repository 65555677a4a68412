import pytest
import torch

from nseg_train.config import ModelConfig
from nseg_train.losses import deep_supervision_loss, unet_loss
from nseg_train.models import DeepSupervisedUNet, unet_from_config


def small(levels: int) -> torch.nn.Module:
    return unet_from_config(ModelConfig(channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1, deep_supervision=levels))


def test_training_returns_auxiliary_outputs_at_input_size_and_eval_the_output_only():
    model = small(2)
    assert isinstance(model, DeepSupervisedUNet)
    x = torch.rand(2, 3, 64, 64)
    out, aux = model.train()(x)
    assert out.shape == (2, 2, 64, 64) and [a.shape for a in aux] == [(2, 2, 64, 64)] * 2
    plain = model.eval()(x)
    assert isinstance(plain, torch.Tensor) and plain.shape == (2, 2, 64, 64)
    # Eval is exactly the wrapped UNet: the heads do not touch the exported output.
    torch.testing.assert_close(plain, model.unet(x))


def test_auxiliary_heads_get_gradients_and_add_to_the_loss():
    torch.manual_seed(0)
    model = small(2).train()
    x = torch.rand(2, 3, 32, 32)
    y = (torch.rand(2, 2, 32, 32) > 0.5).float()
    out, aux = model(x)
    loss, parts = deep_supervision_loss("bce_dice_dist", out, aux, y)
    main, _ = unet_loss("bce_dice_dist", out, y)
    assert loss.item() == pytest.approx(main.item() + 0.5 * parts["aux1"] + 0.25 * parts["aux2"], rel=1e-5)
    loss.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.heads)


def test_plain_config_builds_the_plain_unet():
    assert not isinstance(small(0), DeepSupervisedUNet)


def test_a_deep_copy_keeps_its_own_auxiliary_outputs():
    import copy

    model = small(2).train()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1)
    x = torch.rand(1, 3, 32, 32)
    _, aux = model(x)
    _, aux_twin = twin(x)
    _, aux_again = model(x)
    torch.testing.assert_close(aux[0], aux_again[0])
    assert not torch.allclose(aux[0], aux_twin[0])
