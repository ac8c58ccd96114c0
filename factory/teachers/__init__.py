"""Teachers: the roles r1_zero, rl_1 and v3, each bound to one backend.

`build_teacher(config)` is the single entry point; backends are imported
lazily so that, e.g., vllm is only imported when a recipe asks for it.
"""

from __future__ import annotations

from pathlib import Path

from factory.recipe import TeacherConfig
from factory.teachers.base import Completion, GenerationRequest, Teacher, TeacherStats, split_think

__all__ = ["Completion", "GenerationRequest", "Teacher", "TeacherStats", "build_teacher", "split_think"]


def build_teacher(config: TeacherConfig, *, recipe_file: Path | None = None) -> Teacher:
    """The teacher a recipe asks for. Replay teachers are built by `factory.teachers.replay`."""
    if config.backend == "transformers":
        from factory.teachers.transformers_backend import TransformersTeacher

        return TransformersTeacher(config)
    if config.backend == "openai":
        from factory.teachers.openai_backend import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "vllm":
        from factory.teachers.vllm_backend import VLLMTeacher

        return VLLMTeacher(config)
    raise ValueError(f"teacher.backend: {config.backend!r} does not generate; replay imports traces")
