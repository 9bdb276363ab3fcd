import torch
import torch.nn.functional as F

from kernels.attention_metadata import AttentionMetadata


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of the step's new tokens over everything in the paged cache.

    query: [T, Hq, D]; key_cache/value_cache: [num_blocks, block_size, Hkv, D]
    (the new tokens' K/V must already be written). Returns [T, Hq, D].
    Decodes (one new token each) run as one padded batched call; prompt chunks
    run one sequence at a time, each with its cached prefix in front.
    """
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    flat_k = key_cache.view(-1, num_kv_heads, head_dim)
    flat_v = value_cache.view(-1, num_kv_heads, head_dim)
    out = torch.empty_like(query)

    if meta.num_decodes:
        # A step of decodes only (the common case) uses the batch as it is:
        # no gather of the queries and no scatter of the result.
        only_decodes = not meta.prefills
        q = query if only_decodes else query[meta.decode_token_index]
        k = flat_k[meta.decode_kv_slots].transpose(1, 2)  # [Bd, Hkv, L, D]
        v = flat_v[meta.decode_kv_slots].transpose(1, 2)
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2), k, v, attn_mask=meta.decode_kv_mask, scale=scale, enable_gqa=True
        ).squeeze(2)  # q: [Bd, Hq, 1, D]
        if only_decodes:
            return o
        out[meta.decode_token_index] = o

    for seq in meta.prefills:
        end = seq.token_start + seq.num_tokens
        q = query[seq.token_start : end].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        k = flat_k[seq.kv_slots].transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
        v = flat_v[seq.kv_slots].transpose(0, 1).unsqueeze(0)
        if seq.context_len == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            # Query i sits at position context_len + i and sees keys 0..context_len + i.
            total = seq.context_len + seq.num_tokens
            q_pos = torch.arange(seq.context_len, total, device=query.device).unsqueeze(1)
            k_pos = torch.arange(total, device=query.device).unsqueeze(0)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=k_pos <= q_pos, scale=scale, enable_gqa=True
            )
        out[seq.token_start : end] = o.squeeze(0).transpose(0, 1)
    return out
