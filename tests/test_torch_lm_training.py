"""A small LSTM character language model trained for 20 steps with fastrnn's
Trainer (Adam, gradient clipping, truncated BPTT over contiguous streams) gives
the same per-step losses as the same model trained in PyTorch
(nn.Embedding + nn.LSTM + nn.Linear, clip_grad_norm_, torch.optim.Adam) from the
same initial weights and data, in float32."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastrnn import losses, nn, optim  # noqa: E402
from fastrnn.data import CharVocab, StreamBatcher  # noqa: E402
from fastrnn.demo import load_text  # noqa: E402
from fastrnn.trainer import Trainer  # noqa: E402

STEPS, B, BPTT, E, H = 20, 4, 12, 8, 24
LR, CLIP = 5e-3, 0.3


class TorchLM(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, E)
        self.rnn = torch.nn.LSTM(E, H)
        self.head = torch.nn.Linear(H, vocab_size)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.embed(x), hidden)
        return self.head(out), hidden


def test_lm_training_matches_pytorch_step_by_step():
    text = load_text()[:B * (STEPS * BPTT + 1)]
    vocab = CharVocab.from_text(text)
    batches = StreamBatcher(vocab.encode(text), B, BPTT)
    assert len(batches) == STEPS

    model = nn.LanguageModel.build(len(vocab), H, embedding_dim=E, seed=0, n_threads=1)
    opt = optim.Adam(model, lr=LR)
    trainer = Trainer(model, losses.CrossEntropyLoss(), opt, clip_grad_norm=CLIP,
                      progress=False)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tm = TorchLM(len(vocab))
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
        topt = torch.optim.Adam(tm.parameters(), lr=LR)
        torch_losses, clipped, hidden = [], 0, None
        for batch in batches:
            x = torch.from_numpy(batch.inputs)
            y = torch.from_numpy(batch.targets)
            if hidden is not None:                 # truncated BPTT: values carried
                hidden = tuple(h.detach() for h in hidden)
            topt.zero_grad()
            logits, hidden = tm(x, hidden)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                                     y.reshape(-1))
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(tm.parameters(), CLIP))
            clipped += norm > CLIP
            topt.step()
            torch_losses.append(loss.item())
    finally:
        torch.set_num_threads(old_threads)

    trainer.fit(batches, epochs=1)
    assert clipped >= STEPS // 2                   # the clipping is really exercised
    np.testing.assert_allclose(trainer.step_losses, torch_losses, rtol=1e-4)
    assert torch_losses[-1] < 0.9 * torch_losses[0]         # it learns
    for name, value in tm.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=1e-3,
                                   atol=1e-4, err_msg=name)
