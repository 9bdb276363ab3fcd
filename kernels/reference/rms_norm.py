import torch


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of ``x + residual``; returns ``(normed, x + residual)``.

    The sum is taken in the input dtype and the normalisation in float32, then
    cast back before the weight multiply: the order HF Llama uses, so the
    result is bit-identical to it in every dtype.
    """
    if residual is not None:
        x = x + residual
    x_f32 = x.float()
    variance = x_f32.pow(2).mean(-1, keepdim=True)
    normed = (x_f32 * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed, x
