"""Column-major Linear weights (genlab.inference.weight_layout): same values, same model, faster GEMV."""

import torch

from genlab.inference.weight_layout import column_major_linears, is_column_major
from genlab.models import ModelConfig, Transformer
from genlab.models.hf_io import load_pretrained, save_pretrained


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    shape = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, max_seq_len=64, tie_embeddings=True)
    return Transformer(ModelConfig.llama_like(**{**shape, **overrides})).eval()


def test_relayout_keeps_values_identity_and_ties():
    model = _model()
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    x = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert column_major_linears(model) == linears  # the tied head re-lays out the shared embedding too
    for name, p in model.named_parameters():
        assert p is before[name][0] and torch.equal(p, before[name][1])
    assert model.head.weight is model.embed.weight
    assert all(is_column_major(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert column_major_linears(model) == 0  # idempotent
    with torch.no_grad():
        assert torch.allclose(model(x), logits, atol=1e-5, rtol=1e-5)


def test_relaid_out_model_saves_loads_and_trains(tmp_path):
    model = _model(tie_embeddings=False)
    column_major_linears(model)
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), name
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    first = model.loss(x[:, :-1], x[:, 1:]).item()
    for _ in range(5):
        loss = model.loss(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model.loss(x[:, :-1], x[:, 1:]).item() < first - 0.1
