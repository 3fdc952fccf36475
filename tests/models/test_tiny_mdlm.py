import pytest
import torch

from cogrpo.data.reasoning import ALPHABET, MAX_PROMPT
from cogrpo.models.checkpoint import build_model, load_model, save_model
from cogrpo.models.tiny_mdlm import COMPLETION, EOS, PAD, TinyMDLM, decode_text, encode_text
from cogrpo.proto.config import ModelConfig, TinyArch
from cogrpo.proto.errors import InputError

ARCH = TinyArch(d_model=32, layers=1, heads=2)
PROMPTS = ["347+58=", "1234341220404020", "3,7,25->46", "9" * MAX_PROMPT]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyMDLM(ARCH).eval()


def test_vocabulary_is_padding_eos_then_the_alphabet_with_the_mask_last(model):
    assert model.codebook_size == 2 + len(ALPHABET) and model.mask_id == model.codebook_size
    assert model.num_tokens == COMPLETION == 24
    assert encode_text(ALPHABET) == list(range(2, 2 + len(ALPHABET)))
    assert model.token_emb.num_embeddings == model.codebook_size + 1


@pytest.mark.parametrize("text", ["#405", "347+58=405#405", "", ALPHABET, "(1+2)*3/4-5,6->7", "#" * COMPLETION])
def test_completions_round_trip_through_encode_and_decode(model, text):
    tokens = model.encode_completions([text])
    assert tokens.shape == (1, COMPLETION) and (tokens[0, len(text):] == EOS).all()
    assert model.decode_texts(tokens) == [text]


def test_prompts_are_left_padded_and_decode_back(model):
    cond = model.encode_prompts(PROMPTS)
    assert cond.shape == (len(PROMPTS), MAX_PROMPT) and cond.dtype == torch.long
    for row, prompt in zip(cond, PROMPTS):
        start = MAX_PROMPT - len(prompt)  # the prompt ends where the completion starts
        assert (row[:start] == PAD).all() and decode_text(row[start:].tolist()) == prompt


@pytest.mark.parametrize("ids, text", [
    ([2, 3, EOS, 4], "01"), ([2, PAD, 3], "0"), ([2, 22, 3], "0"), ([EOS] * 5, ""), ([], ""), ([2 + 19], "#")])
def test_decoding_stops_at_the_first_non_character(ids, text):
    assert decode_text(ids) == text


@pytest.mark.parametrize("prompt", ["", "1" * (MAX_PROMPT + 1), "1" * 5000, "two+2=", "1 + 1 =", "1+1=\n", "３+1=",
                                    "\x00", "é"])
def test_bad_prompts_are_one_line_input_errors(model, prompt):
    with pytest.raises(InputError) as info:
        model.encode_prompts(["1+1=", prompt])
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("completion", ["1" * (COMPLETION + 1), "#40a", "#405\n"])
def test_bad_completions_are_input_errors(model, completion):
    with pytest.raises(InputError):
        model.encode_completions([completion])


def test_logits_cover_the_completion_only(model):
    cond = model.encode_prompts(PROMPTS)
    tokens = torch.full((len(PROMPTS), COMPLETION), model.mask_id)
    assert model(tokens, cond).shape == (len(PROMPTS), COMPLETION, model.codebook_size)


def test_completion_logits_depend_on_the_prompt(model):
    tokens = torch.full((2, COMPLETION), model.mask_id)
    logits = model(tokens, model.encode_prompts(["347+58=", "347+59="]))
    assert not torch.allclose(logits[0], logits[1])  # every position, the first included, sees the prompt
    assert (logits[0] - logits[1]).abs().amax(-1).min() > 0


def test_attention_is_bidirectional_over_the_completion(model):
    cond = model.encode_prompts(["347+58="] * 2)
    tokens = torch.full((2, COMPLETION), model.mask_id)
    tokens[1, -1] = EOS  # only the last position differs
    logits = model(tokens, cond)
    assert not torch.allclose(logits[0, 0], logits[1, 0])  # the first position sees the last


def test_null_conditioning_is_all_masks_and_changes_the_output(model):
    null = model.null_conditioning(3)
    assert null.shape == (3, MAX_PROMPT) and (null == model.mask_id).all()
    tokens = torch.full((1, COMPLETION), model.mask_id)
    assert not torch.allclose(model(tokens, null[:1]), model(tokens, model.encode_prompts(["347+58="])))


def test_prompt_features_average_the_characters_not_the_padding(model):
    cond = model.encode_prompts(["12", "12" + "0"])
    features = model.prompt_features(cond)
    table = model.token_emb.weight
    assert features.shape == (2, model.prompt_feature_dim)
    assert torch.allclose(features[0], table[[3, 4]].mean(0)) and torch.allclose(features[1], table[[3, 4, 2]].mean(0))


def test_checkpoint_round_trip_and_fresh_build(tmp_path, model):
    path = tmp_path / "mdlm.safetensors"
    save_model(model, path)
    back = load_model(path, "tiny_mdlm")
    assert isinstance(back, TinyMDLM) and back.arch == ARCH
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(InputError, match="holds kind 'tiny_mdlm'"):
        load_model(path, "tiny_mdm")
    fresh = build_model(ModelConfig(kind="tiny_mdlm", checkpoint=None, arch=ARCH))
    assert isinstance(fresh, TinyMDLM) and fresh.arch == ARCH
