"""GroundedNames lowers mid-sentence names and numbers that the prompt does not hold."""

import torch

from catalogtune.core.decoding import GroundedNames, grounding_vocab


class _Tok:
    pieces = ["<pad>", "Title", ":", " Garden", " Book", " by", " Jill", " Mary", " a", ".", " The", "1", " lovely",
              "\n"]

    def __len__(self):
        return len(self.pieces)

    def batch_decode(self, ids):
        return [self.pieces[i[0]] for i in ids]


def _ids(*words):
    return [_Tok.pieces.index(w) for w in words]


def test_vocab_marks_name_and_number_starts_and_sentence_ends():
    v = grounding_vocab(_Tok())
    claim = {p for p, c in zip(_Tok.pieces, v["claim"].tolist()) if c}
    assert claim == {" Garden", " Book", " Jill", " Mary", " The", "1"}
    ends = {p for p, e in zip(_Tok.pieces, v["ends"].tolist()) if e}
    assert ends == {".", "\n", ":"}


def test_only_absent_names_are_lowered_and_only_mid_sentence():
    v = grounding_vocab(_Tok())
    prompt = _ids("Title", ":", " Garden", " Book", " by", " Jill", "\n")
    proc = GroundedNames(v, len(prompt), 5.0)
    scores = torch.zeros(2, len(_Tok.pieces))
    mid = torch.tensor([prompt + _ids(" a", " lovely", " by"), prompt + _ids(" a", " lovely", ".")])
    out = proc(mid, scores.clone())
    lowered = {p for p, s in zip(_Tok.pieces, out[0].tolist()) if s < 0}
    assert lowered == {" Mary", " The", "1"}  # " Jill", " Garden", " Book" are in the prompt
    assert torch.equal(out[1], scores[1])  # after a full stop capitals are grammar
    # nothing generated yet: the first token is a sentence start
    assert torch.equal(GroundedNames(v, len(prompt), 5.0)(torch.tensor([prompt]), scores[:1].clone()), scores[:1])
