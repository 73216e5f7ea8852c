"""Load Q-Sched Preset: a dropdown of the preset folders -> the calibrated QSCHED_SCHEDULE (carrying the
sampler and step count it was tuned for), plus that sampler name and step count to wire into a sampler node."""
import logging
import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..calibration.presets import (SHIPPED_PRESETS, PresetError, check_model, check_name, preset_path,
                                   quantizer_mismatch, read_preset_file, schedule_of)
from ..comfy_adapter.calibration import PRESET_FOLDER_NAME, model_hash, user_preset_folder
from ..comfy_adapter.loading import quantizer_of
from .io_types import Schedule

log = logging.getLogger("qsched.presets")


def register_preset_folders():
    folder_paths.add_model_folder_path(PRESET_FOLDER_NAME, user_preset_folder(), is_default=True)
    folder_paths.add_model_folder_path(PRESET_FOLDER_NAME, SHIPPED_PRESETS)
    folder_paths.folder_names_and_paths[PRESET_FOLDER_NAME][1].add(".json")


def preset_names():
    register_preset_folders()   # the user directory can change after import (tests, --user-directory)
    return [name for name in folder_paths.get_filename_list(PRESET_FOLDER_NAME) if name.endswith(".json")]


register_preset_folders()


def find_preset(preset):
    """(folder, path) of `preset` in the preset folders: the first folder holding the name wins, as in ComfyUI's
    get_full_path, and the file must really be in it. PresetError names a bad or missing preset."""
    name = check_name(preset)
    register_preset_folders()
    folders = folder_paths.get_folder_paths(PRESET_FOLDER_NAME)
    found = next(((folder, preset_path(folder, name)) for folder in folders
                  if os.path.lexists(preset_path(folder, name))), None)
    if found is None:
        raise PresetError(f"preset {preset!r} is not in the preset folders ({', '.join(folders)})")
    return found


class QSchedLoadPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedLoadPreset", display_name="Load Q-Sched Preset", category="loaders/qsched",
            description=("A calibrated Q-Sched preset from <user dir>/qsched_presets (and the pack's examples). The "
                         "schedule only samples with the sampler and step count it was calibrated for. Connect the "
                         "model to check that the preset was calibrated for it."),
            inputs=[
                io.Combo.Input("preset", options=preset_names(), tooltip="saved by Q-Sched Calibrate"),
                io.Model.Input("model", optional=True, tooltip="checked against the model hash in the preset"),
                io.Boolean.Input("allow_model_mismatch", default=False, optional=True,
                                 tooltip="use a preset calibrated for another model (warns)"),
            ],
            outputs=[Schedule.Output(display_name="schedule"), io.String.Output(display_name="sampler_name"),
                     io.Int.Output(display_name="steps")],
        )

    @classmethod
    def validate_inputs(cls, preset):
        # a bad name or a preset deleted since the list was read is a node error when the prompt is queued
        if preset is not None:
            try:
                find_preset(preset)
            except PresetError as error:
                return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, preset, **_):
        # the file's stamp: a preset saved again under the same name (a new calibration) is read again
        try:
            stat = os.stat(find_preset(preset)[1])
        except (PresetError, OSError):
            return float("nan")  # execute names the problem
        return stat.st_mtime_ns, stat.st_size

    @classmethod
    def execute(cls, preset, model=None, allow_model_mismatch=False):
        name = check_name(preset)
        folder, path = find_preset(preset)
        data = read_preset_file(path, folder=folder)
        if model is not None:
            mismatch = quantizer_mismatch(data, quantizer_of(model))
            if mismatch:
                log.warning("Q-Sched: %s", mismatch)
            check_model(data, model_hash(model), allow_model_mismatch, name)
        if data.get("example"):
            log.warning("preset %r is a shipped example, not calibrated for your model: run Q-Sched Calibrate", name)
        return io.NodeOutput(schedule_of(data), data["sampler"], data["steps"])


NODES = [QSchedLoadPreset]
