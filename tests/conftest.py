import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

torch.set_num_threads(int(os.environ.get("COGRPO_TEST_THREADS", "2")))
pytest_plugins = ["tests.cli_input"]  # the `workdir` fixture of the CLI's bad-input tests

# With COGRPO_STRICT_SKIPS=1 (CI sets it), a skipped test fails the run unless its reason is one of these: the
# honest skips, for what a machine may lack (a GPU, a judge server, Linux, a loopback interface named lo). A
# required path (Ray, DeepSpeed, Prometheus, a reward model's package) skipped is a failure there.
ALLOWED_SKIPS = ("CUDA", "COGRPO_VLM_URL", "Linux matter", "no interface named lo")
_skipped: list[str] = []


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: without one they are skipped, saying so (an allowed skip)."""
    for item in items:
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA: torch sees no GPU here"))


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_SKIPS):
            _skipped.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("COGRPO_STRICT_SKIPS") == "1" and _skipped:
        terminalreporter.write_line(f"{len(_skipped)} required test(s) skipped (COGRPO_STRICT_SKIPS=1):", red=True)
        for line in _skipped:
            terminalreporter.write_line(f"  {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    """End what the suite started in this process (a Ray driver connection, a torch.distributed group), then leave
    with pytest's status without the interpreter's teardown of the native libraries loaded here (torch, Ray's core
    worker, gloo): that teardown has crashed after a green run (every test passed and reported, then SIGSEGV at
    exit), which would turn the run red for nothing it tested."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if os.environ.get("COGRPO_STRICT_SKIPS") == "1" and _skipped and exitstatus == 0:
        exitstatus = session.exitstatus = 1
    session.config.add_cleanup(lambda: _leave(int(exitstatus)))


def _leave(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class ChatServer:
    """A real OpenAI-style chat completions server on the loopback address. `respond(body)` gets each request's
    JSON body and returns the assistant's text, an HTTP error status, or None to drop the connection unanswered.
    requests: (path, headers, body) of every request."""

    def __init__(self, respond):
        self.respond, self.requests = respond, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, dict(self.headers), body))
                reply = respond(body)
                if reply is None:
                    self.close_connection = True
                elif isinstance(reply, int):
                    self.send_error(reply)
                else:
                    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # close() joins the handlers: none outlives its test to print into another's

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # else the client gave up: a timeout test
                    super().handle_error(request, client_address)

        self.http = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def chat_server():
    """Start ChatServers with `chat_server(respond)`; all are closed after the test."""
    servers = []

    def start(respond) -> ChatServer:
        servers.append(ChatServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def shipped_model():
    from cogrpo.models.checkpoint import build_model
    from cogrpo.proto.config import ModelConfig

    return build_model(ModelConfig())


@pytest.fixture(scope="session")
def clip_tokenizer():
    """A real CLIPTokenizer (CLIP's BPE pipeline) over a tiny letter-level vocabulary: CLIP's own vocabulary is a
    hub download, and the tiny test models need a small one anyway."""
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]:
        vocab[piece] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=12)


@pytest.fixture(scope="module")
def single_thread():
    """For tiny models: their ops are too small to gain from a second thread, and on a loaded 2-core machine the
    hand-offs between threads cost several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipeline_parts(clip_tokenizer):
    """A factory of the components aMUSEd and Meissonic share, tiny and random, under their folder names: a VQ-GAN
    with `vq_levels` resolution levels (2^(levels-1) pixels per code), a CLIP text tower (width 32, projection 16)
    and a scheduler that holds the mask id."""
    from diffusers import AmusedScheduler, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def build(codebook: int, mask_token: int, vq_levels: int = 2) -> dict:
        torch.manual_seed(0)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=clip_tokenizer.model_max_length, projection_dim=16,
            bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id))
        vqvae = VQModel(
            block_out_channels=(8,) * vq_levels, down_block_types=("DownEncoderBlock2D",) * vq_levels,
            up_block_types=("UpDecoderBlock2D",) * vq_levels, latent_channels=4, num_vq_embeddings=codebook,
            vq_embed_dim=4, norm_num_groups=4, lookup_from_codebook=True)
        return {"vqvae": vqvae, "text_encoder": text_encoder, "tokenizer": clip_tokenizer,
                "scheduler": AmusedScheduler(mask_token_id=mask_token)}

    return build


@pytest.fixture(scope="session")
def tiny_amused(tmp_path_factory, tiny_pipeline_parts):
    """A factory of tiny random-weight aMUSEd folders of the real architecture, saved in AmusedPipeline's layout:
    `sample_size` codes per side, images of sample_size * 2^(vq_levels-1) pixels."""
    from diffusers import AmusedPipeline, UVit2DModel

    def build(codebook: int = 32, mask_token: int = 39, sample_size: int = 4, vq_levels: int = 2):
        parts = tiny_pipeline_parts(codebook, mask_token, vq_levels)
        transformer = UVit2DModel(
            hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=4, micro_cond_embed_dim=5 * 4,
            encoder_hidden_size=32, vocab_size=mask_token + 1, codebook_size=codebook, in_channels=16,
            block_out_channels=32, num_res_blocks=1, block_num_heads=2, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, sample_size=sample_size)
        path = tmp_path_factory.mktemp("tiny_amused")
        AmusedPipeline(transformer=transformer, **parts).save_pretrained(path)
        return path

    return build


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory, clip_tokenizer):
    """A tiny random-weight SD3 folder of the real architecture (MMDiT, two CLIP towers, T5, a two-level VAE),
    saved in StableDiffusion3Pipeline's layout: 8x8x4 latents, 16 px images, scheduler shift 3."""
    import string

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
        StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

    torch.manual_seed(0)

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=clip_tokenizer.model_max_length, projection_dim=16,
            bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id))

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0),
              *((c, -1.0) for c in string.ascii_lowercase)]  # T5's layout: pad, eos, unk, then the vocabulary
    t5_tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=16)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        shift_factor=0.06, scaling_factor=1.5, use_quant_conv=False, use_post_quant_conv=False)
    path = tmp_path_factory.mktemp("tiny_sd3")
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(), tokenizer=clip_tokenizer, text_encoder_2=clip(), tokenizer_2=clip_tokenizer,
        text_encoder_3=t5, tokenizer_3=t5_tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory, clip_tokenizer, tiny_sd3):
    """A tiny random-weight FLUX.1-dev folder of the real architecture (double- and single-stream blocks, guidance
    embedding, CLIP-L pooled and T5 text, a two-level VAE), saved in FluxPipeline's layout: 8x8x4 latents packed
    as 16 positions of 16, 16 px images. Its T5 and VAE are the tiny SD3's; its CLIP has no projection."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, \
        StableDiffusion3Pipeline
    from transformers import CLIPTextModel

    sd3 = StableDiffusion3Pipeline.from_pretrained(tiny_sd3, local_files_only=True)
    torch.manual_seed(0)
    clip = CLIPTextModel(sd3.text_encoder.config)
    transformer = FluxTransformer2DModel(
        in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=4, max_image_seq_len=64)
    path = tmp_path_factory.mktemp("tiny_flux")
    FluxPipeline(transformer=transformer, scheduler=scheduler, vae=sd3.vae, text_encoder=clip,
                 tokenizer=sd3.tokenizer, text_encoder_2=sd3.text_encoder_3, tokenizer_2=sd3.tokenizer_3
                 ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory, clip_tokenizer):
    """A tiny random-weight CLIP (model + processor) saved the way transformers saves a real one."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    text = dict(vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=clip_tokenizer.model_max_length,
                bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=clip_tokenizer).save_pretrained(path)
    return path


TINY_HPS_ARCH = "cogrpo-tiny-hps-ViT"


@pytest.fixture(scope="session")
def tiny_hps(tmp_path_factory):
    """(open_clip architecture, the model as HPS training left it, its checkpoint file): a tiny architecture
    registered with open_clip from a config file here, random weights saved as {"state_dict": ...}."""
    import json

    import open_clip

    tiny = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    root = tmp_path_factory.mktemp("tiny_hps")
    (root / f"{TINY_HPS_ARCH}.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(root / f"{TINY_HPS_ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_HPS_ARCH, pretrained=None).eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, root / "HPS_tiny.pt")
    return TINY_HPS_ARCH, model, root / "HPS_tiny.pt"


@pytest.fixture(scope="session")
def learner_update():
    """One Co-GRPO update of a masked image model on a 4-sample batch it decoded itself (4 steps, phi's actions
    sampled): the learner's metrics. Every step of every sample is trained."""
    from cogrpo.learner.learner import Learner, ScoredBatch
    from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
    from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig
    from cogrpo.rollout.masked_image.family import MaskedImageFamily
    from cogrpo.rollout.masked.sampler import generate

    def update(model, prompts: list[str]) -> tuple[dict, object]:
        config = Config(sampler=SamplerConfig(steps=4, guidance=1.0), algo=AlgoConfig(lr=1e-2, minibatch=4))
        family = MaskedImageFamily(config)
        policy = SchedulePolicy(config.schedule_policy, family.knobs,
                                family.schedule_encoder(model, config.schedule_policy))
        traj = generate(model, model.encode_prompts(prompts), PolicySchedule(policy, family.hand_schedule(4)), 4, 1)
        batch = ScoredBatch(traj, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool),
                            torch.ones(4, 4, dtype=torch.bool))
        return Learner(model, policy, config, family).update(batch, iteration=0), traj

    return update


def fit_loop(config, run_dir):
    """Run a config's training loop to its end in the config's runtime (Ray: an embedded cluster, shut down
    afterwards); returns the loop."""
    from cogrpo.cluster.loop import trainer

    if config.runtime == "ray":
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    loop = trainer(config, str(run_dir), log=lambda line: None)
    try:
        loop.fit()
    finally:
        loop.close()
        if config.runtime == "ray":
            ray.shutdown()
    return loop


@pytest.fixture
def fit_run():
    return fit_loop
