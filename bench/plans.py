"""The memory plan (plan.py) of each shipped config at the GPU count it was sized for: offline, seconds.

    python bench/plans.py                    # on the default rollout path (plain)
    python bench/plans.py --rollouts static  # on the fast path (sample.RolloutCopy)
    python bench/plans.py --teacher-ranks 2  # the multi-GPU configs with the teacher on 2 of their GPUs

The published models' configurations are written below (no hub access) into temporary directories,
and each YAML's student and teacher are pointed at them; every other field is the YAML's, or
scope.Config's default where the YAML does not set it.
"""
import argparse
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import yaml
from transformers import Qwen2Config, Qwen3Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import plan  # noqa: E402
import toy  # noqa: E402
from scope import Config  # noqa: E402

# Each model's config.json on the Hugging Face Hub (huggingface.co/<name>/blob/main/config.json).
QWEN2 = dict(rms_norm_eps=1e-6, bos_token_id=151_643, eos_token_id=151_643)
MODELS = {
    "Qwen2.5-0.5B": Qwen2Config(**QWEN2, vocab_size=151_936, hidden_size=896, intermediate_size=4_864,
                                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                tie_word_embeddings=True, max_position_embeddings=32_768, rope_theta=1e6),
    "Qwen2.5-7B": Qwen2Config(**QWEN2, vocab_size=152_064, hidden_size=3_584, intermediate_size=18_944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              tie_word_embeddings=False, max_position_embeddings=131_072, rope_theta=1e6),
    # Qwen2 architecture, 1.78B parameters, untied head
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": Qwen2Config(
        **QWEN2, vocab_size=151_936, hidden_size=1_536, intermediate_size=8_960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False,
        max_position_embeddings=131_072, rope_theta=10_000.0),
    # fine-tuned from DeepSeek-R1-Distill-Qwen-7B: Qwen2.5-7B's architecture, 7.62B parameters
    "Skywork/Skywork-OR1-7B": Qwen2Config(
        **QWEN2, vocab_size=152_064, hidden_size=3_584, intermediate_size=18_944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
        max_position_embeddings=131_072, rope_theta=10_000.0),
    # Qwen3, 1.72B parameters (its embedding and head are one tensor; 1.41B without it)
    "Qwen/Qwen3-1.7B-Base": Qwen3Config(
        vocab_size=151_936, hidden_size=2_048, intermediate_size=6_144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        max_position_embeddings=32_768, rope_theta=1e6, rms_norm_eps=1e-6),
    # Qwen3, 8.19B parameters; its config.json says 40,960 positions (32,768 native, as its model card)
    "Qwen/Qwen3-8B": Qwen3Config(
        vocab_size=151_936, hidden_size=4_096, intermediate_size=12_288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
        max_position_embeddings=40_960, rope_theta=1e6, rms_norm_eps=1e-6),
    # toy.py's models: a 320-id tokenizer; the teacher's head has 64 padding rows
    ".toy/student": toy.tiny_qwen2(320, tied=True, seed=1).config,
    ".toy/teacher": toy.tiny_qwen2(320 + 64, tied=False, seed=2).config,
}
# config file -> (GPUs, GB per GPU) it is sized for
SHIPPED = {
    "configs/qwen2.5.yaml": (1, 80),
    "configs/r1-distill-1.5b_skywork-7b.yaml": (8, 80),
    "configs/qwen3-1.7b-base_qwen3-8b.yaml": (8, 80),
    "configs/toy.yaml": (1, 80),
}


def shipped_plan_config(path: str, gpus: int, gpu_memory_gb: float) -> SimpleNamespace:
    """scope.Config's defaults, then the YAML's values, then the GPUs it is sized for."""
    cfg = SimpleNamespace(**asdict(Config()))
    vars(cfg).update(yaml.safe_load((ROOT / path).read_text()))
    cfg.gpus, cfg.gpu_memory_gb = gpus, gpu_memory_gb
    return cfg


def main(rollouts: str = "", teacher_ranks: int = 0) -> bool:
    fits = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Each model is written under its own name, and the plan runs from there: the YAML's names
        # are local directories then, and the tables print them as they are.
        for name, config in MODELS.items():
            config.save_pretrained(Path(tmp) / name)
        os.chdir(tmp)
        for path, (gpus, memory) in SHIPPED.items():
            print(f"## {path}\n")
            cfg = shipped_plan_config(path, gpus, memory)
            cfg.rollouts = rollouts or cfg.rollouts
            if teacher_ranks and gpus == 1:
                continue
            if teacher_ranks:  # the batch must share out evenly over the student's GPUs: the nearest multiple below
                cfg.teacher_ranks = teacher_ranks
                cfg.batch_size -= cfg.batch_size % (gpus - teacher_ranks)
                print(f"teacher_ranks {teacher_ranks}, batch_size {cfg.batch_size}\n")
            fits[path] = plan.print_plan(cfg)
            print()
        os.chdir(ROOT)
    for path, ok in fits.items():
        print(f"{path}: {'fits' if ok else 'DOES NOT FIT'}")
    return all(fits.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", choices=("plain", "static"), default="", help="default: each config's own")
    parser.add_argument("--teacher-ranks", type=int, default=0, help="plan the multi-GPU configs with the teacher on "
                                                                     "this many of their GPUs")
    args = parser.parse_args()
    sys.exit(0 if main(args.rollouts, args.teacher_ranks) else 1)
