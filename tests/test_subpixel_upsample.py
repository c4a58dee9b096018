"""The exact sub-pixel form of diffusers' Upsample2D (rp_diffusers.models.subpixel_upsample)."""

import copy

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.upsampling import Upsample2D
from peft import LoraConfig, inject_adapter_in_model

from rp_diffusers.models.subpixel_upsample import SubpixelUpsample2D, subpixel_kernel, use_subpixel_upsampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(channels=6, out_channels=5, seed=0):
    torch.manual_seed(seed)
    plain = Upsample2D(channels, use_conv=True, out_channels=out_channels).eval().requires_grad_(False)
    holder = torch.nn.Sequential(copy.deepcopy(plain))
    assert use_subpixel_upsampling(holder) == 1
    fast = holder[0]
    assert isinstance(fast, SubpixelUpsample2D) and type(plain) is Upsample2D  # a new module; the original untouched
    return plain, fast


@pytest.mark.parametrize("shape", [(2, 6, 7, 5), (1, 6, 1, 1), (1, 6, 8, 13)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_matches_upsample2d_in_float64(shape, channels_last, monkeypatch):
    plain, fast = _pair()
    plain.double(), fast.double()
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = plain(x)
    with monkeypatch.context() as patch:  # the sub-pixel path never upsamples
        patch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: pytest.fail("fell back to interpolate"))
        out = fast(x)
    assert out.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if shape[2] * shape[3] > 1:  # a 1x1 map is contiguous in both layouts
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_subpixel_trainable_weights_still_get_gradients():
    """A convolution being trained runs the original forward, so its weights receive their gradient."""
    plain, fast = _pair()
    plain.requires_grad_(True), fast.requires_grad_(True)
    x = torch.randn(1, 6, 4, 5)
    plain(x).square().sum().backward()
    fast(x).square().sum().backward()
    torch.testing.assert_close(fast.conv.weight.grad, plain.conv.weight.grad, rtol=1e-5, atol=1e-5)


def test_subpixel_gradients_match():
    plain, fast = _pair()
    # frozen weights (as _pair makes them): the sub-pixel path runs and passes gradients to the input
    x = torch.randn(2, 6, 5, 9, requires_grad=True)
    (grad_plain,) = torch.autograd.grad(plain(x).square().sum(), x)
    (grad_fast,) = torch.autograd.grad(fast(x).square().sum(), x)
    torch.testing.assert_close(grad_fast, grad_plain, rtol=1e-5, atol=1e-5)


def test_subpixel_bfloat16_is_as_close_as_plain_bfloat16():
    plain, fast = _pair(channels=32, out_channels=32)
    x = torch.randn(1, 32, 12, 10)
    reference = plain.double()(x.double())
    plain.to(torch.bfloat16), fast.to(torch.bfloat16)
    error_plain = (plain(x.bfloat16()).double() - reference).abs().mean()
    error_fast = (fast(x.bfloat16()).double() - reference).abs().mean()
    assert fast(x.bfloat16()).dtype == torch.bfloat16
    assert error_fast < 2 * error_plain


def test_subpixel_keeps_state_dict_and_refreshes_after_weight_changes():
    plain, fast = _pair()
    assert list(fast.state_dict()) == list(plain.state_dict())  # the summed kernel is not saved
    with torch.no_grad():
        fast.conv.weight.mul_(2)  # in place (e.g. fuse_lora)
        plain.conv.weight.mul_(2)
    x = torch.randn(1, 6, 4, 4)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    fast.load_state_dict({k: v * 3 for k, v in plain.state_dict().items()})
    plain.load_state_dict({k: v * 3 for k, v in plain.state_dict().items()})
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_subpixel_falls_back_for_other_output_sizes_and_injected_lora():
    plain, fast = _pair()
    x = torch.randn(1, 6, 4, 5)
    torch.testing.assert_close(fast(x, output_size=(9, 11)), plain(x, output_size=(9, 11)))
    torch.testing.assert_close(fast(x, output_size=(8, 10)), plain(x), rtol=1e-5, atol=1e-5)
    config = LoraConfig(r=2, target_modules=["conv"], init_lora_weights=False)
    plain, fast = inject_adapter_in_model(config, plain), inject_adapter_in_model(config, fast)
    fast.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fast(x), plain(x))  # LoRA-wrapped conv: the original forward runs


def test_subpixel_kernel_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(O, I, 3, 3\)"):
        subpixel_kernel(torch.zeros(2, 2, 5, 5))


def test_use_subpixel_upsampling_on_a_vae_is_idempotent_and_exact():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
    ).eval()
    fast = copy.deepcopy(vae)
    assert use_subpixel_upsampling(fast) == 1
    assert use_subpixel_upsampling(fast) == 1  # already switched: refreshed, not wrapped again
    latents = torch.randn(1, 4, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(fast.decode(latents).sample, vae.decode(latents).sample, rtol=1e-5, atol=1e-5)
    assert fast.state_dict().keys() == vae.state_dict().keys()


def test_subpixel_replaces_modules_without_changing_any_class_and_shares_the_convolution():
    plain = Upsample2D(6, use_conv=True, out_channels=5)
    fast = SubpixelUpsample2D.from_upsample(plain)
    assert fast.conv is plain.conv and type(plain) is Upsample2D
    with pytest.raises(ValueError, match="a module cannot replace itself"):
        use_subpixel_upsampling(plain)
    with pytest.raises(ValueError, match="cannot be rewritten"):
        SubpixelUpsample2D.from_upsample(Upsample2D(6, use_conv=False))
