"""LLaDA behind our contract, on a tiny folder the tests write in LLaDA's layout: a character-level tokenizer whose
mask is the token named `<|mdm_mask|>` (no mask_token attribute, as LLaDA's), a chat template, and the model's own
code, `modeling_tinyllada.py` (a bidirectional transformer with rotary positions, LLaDA's style), that config.json
maps through `auto_map`, so transformers runs it only with trust_remote_code. Also a plain transformers masked LM
(a tiny BertForMaskedLM), which needs no trust. Everything loads through our own code, local files only."""

import importlib.util
import json
import re
import shutil

import pytest
import torch

from cogrpo.cluster.build import build_policies
from cogrpo.models.checkpoint import build_model
from cogrpo.models.llada import LLADA_MASK, FolderTextModel, load_llada
from cogrpo.proto.config import AlgoConfig, ModelConfig, load_config
from cogrpo.proto.errors import InputError
from cogrpo.rollout.masked.sampler import blocks_of
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import full_plan

pytestmark = pytest.mark.usefixtures("single_thread")

LENGTH, BLOCK, STEPS, PROMPT_TOKENS = 8, 4, 4, 64
SPECIALS = ["<pad>", "<|eot_id|>", LLADA_MASK, "<unk>", "<|start_header_id|>", "<|end_header_id|>"]
ANSWER = "####"  # one token, as in LLaDA's (Llama's) vocabulary
CHARS = " \n0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ?.,;$'"
EMBEDDINGS = 96  # the embedding has more rows than the tokenizer has tokens, as LLaDA's (126464)
CHAT_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                 "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
                 "\n\n{% endif %}")
TASKS = [{"question": "Tom has 2 cats and 2 dogs. How many pets?", "answer": "2 + 2 = 4\n#### 4"},
         {"question": "Ann buys 3 pens, then 4 more. Total?", "answer": "3 + 4 = 7\n#### 7"},
         {"question": "A box has 9 eggs; 4 break. How many left?", "answer": "9 - 4 = 5\n#### 5"}]
PROMPTS = ["Tom has 2 cats.", "How many pens has Ann, if she buys 3?"]

MODELING = '''"""A tiny masked diffusion LM in LLaDA's style: token embedding, bidirectional pre-norm blocks with rotary
positions and a SwiGLU MLP, an LM head over the vocabulary. Importing it leaves a marker when TINYLLADA_MARKER
names a file (the tests' proof of whether this code ran)."""
import os
import pathlib

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

if os.environ.get("TINYLLADA_MARKER"):
    pathlib.Path(os.environ["TINYLLADA_MARKER"]).write_text("imported")


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tinyllada"

    def __init__(self, vocab_size=96, d_model=32, n_heads=4, n_layers=2, mlp_ratio=2, rope_theta=10000.0,
                 mask_token_id=2, **kwargs):
        self.vocab_size, self.d_model, self.n_heads, self.n_layers = vocab_size, d_model, n_heads, n_layers
        self.mlp_ratio, self.rope_theta, self.mask_token_id = mlp_ratio, rope_theta, mask_token_id
        super().__init__(**kwargs)


def rotary(x, theta):
    half = x.shape[-1] // 2
    inverse = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angle = torch.arange(x.shape[-2], dtype=torch.float32, device=x.device)[:, None] * inverse
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class LLaDABlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, hidden = config.d_model, config.d_model * config.mlp_ratio
        self.heads, self.theta = config.n_heads, config.rope_theta
        self.attn_norm, self.ff_norm = nn.RMSNorm(d), nn.RMSNorm(d)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj, self.up_proj = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)

    def forward(self, x, keep):
        b, n, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        mask = None if keep is None else keep[:, None, None, :]  # padded keys are not attended to
        att = nn.functional.scaled_dot_product_attention(rotary(q, self.theta), rotary(k, self.theta), v,
                                                         attn_mask=mask, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, n, d))
        h = self.ff_norm(x)
        return x + self.ff_out(nn.functional.silu(self.ff_proj(h)) * self.up_proj(h))


class TinyLLaDAModelLM(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.2)

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids, attention_mask=None, **kwargs):
        keep = None if attention_mask is None else attention_mask.bool()
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x, keep)
        return CausalLMOutputWithPast(logits=self.lm_head(self.ln_f(x)))
'''


def char_tokenizer(specials, **special_names):
    """A WordLevel tokenizer over single characters (every character is split off alone), the special tokens first,
    wrapped as transformers' fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, ANSWER, *CHARS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special_names["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    backend.decoder = decoders.Fuse()
    named = set(special_names.values())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special_names,
                                        additional_special_tokens=[t for t in specials if t not in named])
    tokenizer.add_tokens([ANSWER])  # matched whole, before the characters are split
    return tokenizer


def import_modeling(path):
    spec = importlib.util.spec_from_file_location("modeling_tinyllada", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teach(lm, tokenizer) -> None:
    """A few steps of masked diffusion training so that the model answers `#### N` and stops, N right for about half
    of the samples (its own answer or a neighbour's): a random model never answers, and a GRPO update of a group
    whose rewards are all alike changes nothing."""
    model = FolderTextModel(lm, tokenizer, LENGTH, PROMPT_TOKENS)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows, prompts = [], []
    for task in TASKS:
        right = task["answer"].rsplit(ANSWER, 1)[1].strip()
        for digit in (right, str(int(right) + 1)):
            rows.append(ids(ANSWER + digit) + [tokenizer.eos_token_id] * (LENGTH - 2))
            prompts.append(task["question"])
    target, cond = torch.tensor(rows), model.encode_prompts(prompts)
    optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        masked = torch.rand(target.shape, generator=generator) < torch.rand(len(target), 1, generator=generator)
        masked[:, 0] |= ~masked.any(1)
        logits = model(target.masked_fill(masked, model.mask_id), cond)
        loss = torch.nn.functional.cross_entropy(logits[masked], target[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.eval()


@pytest.fixture(scope="module")
def modules_cache(tmp_path_factory):
    """transformers copies a folder's model code into its modules cache before importing it: a temporary one here."""
    import transformers.dynamic_module_utils as dynamic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory, modules_cache):
    """The tiny LLaDA folder: tokenizer files, modeling_tinyllada.py, config.json with auto_map, model.safetensors."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("tiny_llada")
    tokenizer = char_tokenizer(SPECIALS, pad_token="<pad>", eos_token="<|eot_id|>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert tokenizer.mask_token is None and len(tokenizer) < EMBEDDINGS
    tokenizer.save_pretrained(root)
    (root / "modeling_tinyllada.py").write_text(MODELING)
    modeling = import_modeling(root / "modeling_tinyllada.py")
    torch.manual_seed(0)
    config = modeling.TinyLLaDAConfig(vocab_size=EMBEDDINGS, mask_token_id=tokenizer.convert_tokens_to_ids(LLADA_MASK))
    config.auto_map = {"AutoConfig": "modeling_tinyllada.TinyLLaDAConfig",
                       "AutoModel": "modeling_tinyllada.TinyLLaDAModelLM"}
    lm = modeling.TinyLLaDAModelLM(config)
    teach(lm, tokenizer)
    lm.save_pretrained(root)
    assert "auto_map" in json.loads((root / "config.json").read_text())
    back = AutoModel.from_pretrained(root, trust_remote_code=True, local_files_only=True)
    assert type(back).__name__ == "TinyLLaDAModelLM" and type(back) is not modeling.TinyLLaDAModelLM
    ids = torch.randint(0, EMBEDDINGS, (2, 12))
    assert torch.equal(back(ids).logits, lm(ids).logits)
    return root


def llada_config(folder, **extra) -> ModelConfig:
    return ModelConfig(kind="llada", path=str(folder), trust_folder_code=True, prompt_tokens=PROMPT_TOKENS, **extra)


@pytest.fixture(scope="module")
def model(folder):
    return build_model(llada_config(folder), LENGTH)


def overrides_for(folder, *extra, trust=True):
    return ["model.kind=llada", f"model.path={folder}", f"model.trust_folder_code={str(trust).lower()}",
            f"model.prompt_tokens={PROMPT_TOKENS}", f"sampler.length={LENGTH}", f"sampler.block_length={BLOCK}",
            f"sampler.steps={STEPS}", f"eval.steps={STEPS}", f"train.eval_steps=[{STEPS}]", *extra]


def test_folder_code_runs_only_with_trust_folder_code(folder, tmp_path, monkeypatch):
    untrusted = shutil.copytree(folder, tmp_path / "untrusted_llada")  # a folder whose code was never imported
    marker = tmp_path / "imported"
    monkeypatch.setenv("TINYLLADA_MARKER", str(marker))
    config = load_config(None, overrides_for(untrusted, trust=False))  # the folder is only read at build time
    with pytest.raises(InputError, match="model.trust_folder_code: true") as info:
        build_policies(config)
    assert "\n" not in str(info.value) and str(untrusted) in str(info.value)
    assert not marker.exists()
    with pytest.raises(InputError, match="trust_folder_code"):
        load_llada(untrusted, LENGTH, PROMPT_TOKENS, trust_folder_code=False)
    assert not marker.exists()
    policies = build_policies(load_config(None, overrides_for(untrusted)))  # trusted: the same folder's code runs
    assert marker.is_file() and isinstance(policies.model, FolderTextModel)
    assert type(policies.model.lm).__name__ == "TinyLLaDAModelLM"


def test_logits_are_the_folder_model_s_at_the_completion_with_our_mask_mapped_to_mdm_mask(model):
    tokenizer, vocab = model.text_tokenizer, EMBEDDINGS
    native = tokenizer.convert_tokens_to_ids(LLADA_MASK)
    assert tokenizer.mask_token_id is None  # found by its name, as LLaDA's
    assert (model.codebook_size, model.mask_id, model.native_mask_id, model.num_tokens) == (vocab, vocab, native,
                                                                                           LENGTH)
    assert (model.eos_id, model.pad_id) == (tokenizer.convert_tokens_to_ids("<|eot_id|>"), 0)
    cond = model.encode_prompts(PROMPTS)
    assert cond.shape == (2, PROMPT_TOKENS)
    for row, prompt in zip(cond, PROMPTS):  # LLaDA-Instruct's chat template, then left padding
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        assert text.endswith("assistant<|end_header_id|>\n\n") and prompt in text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row.tolist() == [model.pad_id] * (PROMPT_TOKENS - len(ids)) + ids
    torch.manual_seed(1)
    tokens = torch.randint(0, vocab, (2, LENGTH))
    tokens[:, ::3] = model.mask_id
    logits = model(tokens, cond)
    assert logits.shape == (2, LENGTH, vocab) and logits.dtype == torch.float32
    ids = torch.cat([cond, tokens.masked_fill(tokens == model.mask_id, native)], 1)
    with torch.no_grad():
        theirs = model.lm(input_ids=ids, attention_mask=(torch.cumsum(ids != 0, 1) > 0).long()).logits
    theirs = theirs[:, PROMPT_TOKENS:]
    assert torch.isneginf(logits[..., native]).all() and torch.isfinite(theirs[..., native]).all()
    others = torch.arange(vocab) != native
    assert torch.equal(logits[..., others], theirs[..., others])
    with pytest.raises(IndexError):  # our mask id is past the embedding: unmapped, it could not even be embedded
        model.lm(input_ids=torch.cat([cond, tokens], 1))


def test_left_padding_of_the_prompt_leaves_the_completion_logits_unchanged(model):
    prompt = PROMPTS[1]
    text = model.text_tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                    tokenize=False)
    exact = len(model.text_tokenizer(text, add_special_tokens=False)["input_ids"])
    tight = FolderTextModel(model.lm, model.text_tokenizer, LENGTH, exact)
    torch.manual_seed(2)
    tokens = torch.randint(0, EMBEDDINGS, (1, LENGTH))
    tokens[:, 1::2] = model.mask_id
    padded_cond, tight_cond = model.encode_prompts([prompt]), tight.encode_prompts([prompt])
    assert tight_cond.shape[1] == exact < PROMPT_TOKENS and (padded_cond[0, :PROMPT_TOKENS - exact] == 0).all()
    padded, unpadded = model(tokens, padded_cond), tight(tokens, tight_cond)
    finite = torch.isfinite(unpadded)
    assert torch.equal(finite, torch.isfinite(padded))
    assert torch.allclose(padded[finite], unpadded[finite], atol=1e-5, rtol=0)
    # the padding is kept out of attention: attended to, it would change them
    ids = torch.cat([padded_cond, tokens.masked_fill(tokens == model.mask_id, model.native_mask_id)], 1)
    with torch.no_grad():
        attended = model.lm(input_ids=ids).logits[:, PROMPT_TOKENS:]
    assert not torch.allclose(attended[finite], unpadded[finite], atol=1e-3)


def test_decoding_stops_at_the_end_of_sequence(model):
    tokenizer = model.text_tokenizer
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = model.eos_id
    rows = [ids("So 4.") + [eos] + ids("ab"),
            ids("#### 12") + [model.mask_id] + ids("abc"),  # no end: all of it; our mask id is not a token
            [eos] + ids("abcdefg"),
            # no text for the rows past the tokenizer's tokens (the embedding is larger) nor for special tokens
            ids("x") + [len(tokenizer), EMBEDDINGS - 1, model.pad_id] + ids("y") + [eos] * 3]
    texts = model.decode_texts(torch.tensor(rows))
    assert texts == ["So 4.", "#### 12abc", "", "xy"]


def test_the_masked_text_family_samples_every_position_and_replays_its_log_probs(folder):
    from cogrpo.rollout.masked_text.family import MaskedTextFamily

    family = MaskedTextFamily(load_config(None, overrides_for(folder, "sampler.kind=low_confidence",
                                                              "sampler.temperature=0.8")))
    model = family.build_model()
    traj = family.sample(model, PROMPTS * 2, HandSchedule(family.hand_schedule(STEPS)), full_plan(STEPS), seed=3)
    tokens, commit_step = traj.tensors["tokens"], traj.tensors["commit_step"]
    assert tokens.shape == commit_step.shape == (4, LENGTH)
    assert (tokens != model.mask_id).all() and (tokens != model.native_mask_id).all()
    size, per_block = blocks_of(LENGTH, STEPS, BLOCK)
    assert (size, per_block) == (BLOCK, 2)
    assert torch.equal(commit_step // per_block, (torch.arange(LENGTH) // BLOCK).expand_as(commit_step))
    estimator = family.estimator("trajectory", AlgoConfig())
    steps = list(range(STEPS))
    scored = estimator.log_probs(model, traj, steps, estimator.inputs(traj, 1)[0])
    behaviour = estimator.behaviour(traj, steps)
    assert scored.logp.shape == behaviour.shape == (4, STEPS, LENGTH)
    assert (scored.mask.sum(1) == 1).all()  # every position is one step's action
    assert (behaviour[scored.mask] < 0).all() and torch.isfinite(behaviour[scored.mask]).all()
    assert torch.allclose(scored.logp[scored.mask], behaviour[scored.mask], atol=1e-5)
    texts = family.decode(model, traj)
    assert len(texts) == 4 and all(isinstance(text, str) for text in texts)
    assert texts == model.decode_texts(tokens)
    again = family.sample(model, PROMPTS * 2, HandSchedule(family.hand_schedule(STEPS)), full_plan(STEPS), seed=3)
    assert torch.equal(again.tensors["tokens"], tokens)


def write_run_files(folder, tmp_path):
    tasks = tmp_path / "gsm8k.jsonl"
    tasks.write_text("".join(json.dumps(task) + "\n" for task in TASKS))
    config = {
        "seed": 3, "threads": 1, "runtime": "local",  # a seed whose groups' rewards differ in both iterations
        "model": {"kind": "llada", "path": str(folder), "trust_folder_code": True, "prompt_tokens": PROMPT_TOKENS},
        "sampler": {"kind": "low_confidence", "length": LENGTH, "block_length": BLOCK, "steps": STEPS,
                    "temperature": 1.0, "remask_temperature": 0.0, "batch_size": 4},
        "rewards": [{"kind": "reasoning", "head": "correct", "weight": 1.0}],
        "algo": {"mode": "grpo", "group_size": 2, "prompts_per_iteration": 2, "minibatch": 4, "inner_epochs": 1,
                 "lr": 1e-2, "theta_likelihood": "trajectory"},
        "train": {"iterations": 2, "prompts": str(tasks), "eval_every": 2, "checkpoint_every": 2,
                  "eval_at_start": False, "eval_metadata": {"gsm8k": str(tasks)}, "eval_steps": [STEPS]},
        "eval": {"metadata": str(tasks), "steps": STEPS, "n_per_prompt": 2},
    }
    path = tmp_path / "llada.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path, tasks


def test_two_grpo_iterations_on_gsm8k_lines_train_the_model_then_eval_reports_accuracy(folder, tmp_path, capsys):
    from cogrpo.cli import main
    from cogrpo.cluster.loop import trainer

    config_path, tasks = write_run_files(folder, tmp_path)
    config = load_config(config_path)
    loop = trainer(config, run_dir=str(tmp_path / "run"), log=lambda line: None)
    try:
        assert isinstance(loop.runtime.model, FolderTextModel)
        before = {k: v.clone() for k, v in loop.runtime.model.state_dict().items()}
        loop.fit()
    finally:
        loop.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["train_theta"] for row in rows)
    assert all(0 <= row["reward/reasoning_correct"] <= 1 for row in rows)
    assert all(row["adv_std"] > 0 for row in rows), rows  # rewards differed within a group: a real update
    assert all(row["grad_norm_theta"] > 0 and row["usable"] == 4 for row in rows)
    changed = [k for k, v in loop.runtime.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith("lm.") for k in changed)
    assert (tmp_path / "run" / "checkpoints" / "iter_000002" / "model.safetensors").is_file()
    tuned = build_model(llada_config(folder, checkpoint=str(tmp_path / "run")), LENGTH)  # the run's weights
    assert all(torch.equal(v, loop.runtime.model.state_dict()[k]) for k, v in tuned.state_dict().items())
    capsys.readouterr()
    assert main(["eval", "--config", str(config_path), "--tasks", str(tasks), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["by_task"]) == {"gsm8k"} and 0 <= result["accuracy"] <= 1
    assert result["accuracy"] == result["by_task"]["gsm8k"] and result["samples"] == len(TASKS) * 2


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A plain transformers masked LM: a tiny BertForMaskedLM and a tokenizer whose mask_token is [MASK]."""
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = char_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(root)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32, pad_token_id=0)
                    ).save_pretrained(root)
    assert "auto_map" not in json.loads((root / "config.json").read_text())
    return root


def test_a_plain_transformers_masked_lm_needs_no_trust_and_gives_its_own_logits(bert_folder):
    from transformers import BertForMaskedLM

    config = load_config(None, ["model.kind=llada", f"model.path={bert_folder}", "model.prompt_tokens=16",
                                f"sampler.length={LENGTH}", f"sampler.block_length={BLOCK}", f"sampler.steps={STEPS}",
                                f"eval.steps={STEPS}", f"train.eval_steps=[{STEPS}]"])
    assert config.model.trust_folder_code is False
    model = build_policies(config).model
    assert isinstance(model, FolderTextModel) and type(model.lm) is BertForMaskedLM
    tokenizer = model.text_tokenizer
    vocab, native = len(tokenizer), tokenizer.convert_tokens_to_ids("[MASK]")
    assert (model.codebook_size, model.mask_id, model.native_mask_id, model.eos_id, model.pad_id) == \
        (vocab, vocab, native, None, 0)
    cond = model.encode_prompts(["Tom has 2 cats.", "9 eggs."])  # no chat template: the text alone
    assert cond.shape == (2, 16) and cond[0].tolist()[-15:] == tokenizer("Tom has 2 cats.")["input_ids"]
    torch.manual_seed(3)
    tokens = torch.randint(0, vocab, (2, LENGTH))
    tokens[:, ::2] = model.mask_id
    model.eval()
    logits = model(tokens, cond)
    ids = torch.cat([cond, tokens.masked_fill(tokens == model.mask_id, native)], 1)
    own = BertForMaskedLM.from_pretrained(bert_folder, local_files_only=True).eval()
    with torch.no_grad():
        theirs = own(input_ids=ids, attention_mask=(torch.cumsum(ids != 0, 1) > 0).long()).logits[:, 16:]
    others = torch.arange(vocab) != native
    assert torch.isneginf(logits[..., native]).all()
    assert torch.allclose(logits[..., others], theirs[..., others], atol=1e-5, rtol=0)
    assert model.decode_texts(tokenizer(["ab c", "7"], return_tensors="pt", padding=True)["input_ids"]) == \
        ["ab c", "7"]


def test_a_prompt_past_prompt_tokens_and_a_folder_without_config_json_are_one_line_input_errors(model, tmp_path):
    text = model.text_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                    tokenize=False)
    overhead = len(model.text_tokenizer(text, add_special_tokens=False)["input_ids"]) - 1
    fits = "a" * (PROMPT_TOKENS - overhead)
    assert model.encode_prompts([fits]).shape == (1, PROMPT_TOKENS) and (model.encode_prompts([fits])[0] != 0).all()
    with pytest.raises(InputError, match=f"has {PROMPT_TOKENS + 1} tokens, model.prompt_tokens allows "
                                         f"{PROMPT_TOKENS}") as info:
        model.encode_prompts(["short", fits + "a"])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="empty prompt"):
        model.encode_prompts([" "])
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    for path in (empty, tmp_path / "missing"):
        with pytest.raises(InputError, match=re.escape(f"model.path {path}: no config.json")) as info:
            build_model(ModelConfig(kind="llada", path=str(path)), LENGTH)
        assert "\n" not in str(info.value)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not a JSON object"):
        build_model(ModelConfig(kind="llada", path=str(empty)), LENGTH)


def test_fine_tuned_weights_of_a_tied_masked_lm_save_and_load_over_its_folder(bert_folder, tmp_path):
    from cogrpo.models.checkpoint import save_model

    tuned = build_model(ModelConfig(kind="llada", path=str(bert_folder), prompt_tokens=16), LENGTH)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01)
    save_model(tuned, tmp_path / "model.safetensors")
    back = build_model(ModelConfig(kind="llada", path=str(bert_folder), prompt_tokens=16,
                                   checkpoint=str(tmp_path / "model.safetensors")), LENGTH)
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in back.state_dict().items())


def test_a_tokenizer_without_a_mask_token_is_refused(model):
    tokenizer = char_tokenizer([s for s in SPECIALS if s != LLADA_MASK], pad_token="<pad>", eos_token="<|eot_id|>",
                               unk_token="<unk>")
    with pytest.raises(InputError, match=re.escape(f"the tokenizer has no mask token (a mask_token, or {LLADA_MASK})")):
        FolderTextModel(model.lm, tokenizer, LENGTH, PROMPT_TOKENS)


def test_a_config_json_that_is_not_an_object_is_an_input_error(folder, tmp_path):
    bad = shutil.copytree(folder, tmp_path / "list_config")
    (bad / "config.json").write_text("[]")
    with pytest.raises(InputError, match="not a JSON object"):
        build_model(llada_config(bad), LENGTH)


def test_folder_code_that_fails_on_import_is_one_line(folder, tmp_path):
    broken = shutil.copytree(folder, tmp_path / "broken_llada")
    (broken / "modeling_tinyllada.py").write_text(MODELING + "\n1 / 0\n")
    with pytest.raises(InputError, match="ZeroDivisionError|division by zero"):
        build_model(llada_config(broken), LENGTH)
