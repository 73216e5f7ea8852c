"""Load Q-Sched Preset: a dropdown of the preset folders -> the calibrated QSCHED_SCHEDULE (carrying the
sampler and step count it was tuned for), plus that sampler name and step count to wire into a sampler node."""
import logging
import os

import folder_paths

from ..calibration.presets import (SHIPPED_PRESETS, PresetError, check_model, check_name, preset_path,
                                   read_preset_file, schedule_of)
from ..comfy_adapter.calibration import PRESET_FOLDER_NAME, model_hash, user_preset_folder

log = logging.getLogger("qsched.presets")


def register_preset_folders():
    folder_paths.add_model_folder_path(PRESET_FOLDER_NAME, user_preset_folder(), is_default=True)
    folder_paths.add_model_folder_path(PRESET_FOLDER_NAME, SHIPPED_PRESETS)
    folder_paths.folder_names_and_paths[PRESET_FOLDER_NAME][1].add(".json")


def preset_names():
    register_preset_folders()   # the user directory can change after import (tests, --user-directory)
    return [name for name in folder_paths.get_filename_list(PRESET_FOLDER_NAME) if name.endswith(".json")]


register_preset_folders()


class QSchedLoadPreset:
    CATEGORY = "loaders/qsched"
    RETURN_TYPES = ("QSCHED_SCHEDULE", "STRING", "INT")
    RETURN_NAMES = ("schedule", "sampler_name", "steps")
    FUNCTION = "load"
    DESCRIPTION = ("A calibrated Q-Sched preset from <user dir>/qsched_presets (and the pack's examples). The "
                   "schedule only samples with the sampler and step count it was calibrated for. Connect the model "
                   "to check that the preset was calibrated for it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"preset": (preset_names(), {"tooltip": "saved by Q-Sched Calibrate"})},
                "optional": {"model": ("MODEL", {"tooltip": "checked against the model hash in the preset"}),
                             "allow_model_mismatch": ("BOOLEAN", {"default": False, "tooltip":
                                                      "use a preset calibrated for another model (warns)"})}}

    def load(self, preset, model=None, allow_model_mismatch=False):
        name = check_name(preset)
        register_preset_folders()
        folders = folder_paths.get_folder_paths(PRESET_FOLDER_NAME)
        # the first folder holding the name wins, as in ComfyUI's get_full_path; the file must really be in it
        found = next(((folder, preset_path(folder, name)) for folder in folders
                      if os.path.lexists(preset_path(folder, name))), None)
        if found is None:
            raise PresetError(f"preset {preset!r} is not in the preset folders ({', '.join(folders)})")
        data = read_preset_file(found[1], folder=found[0])
        if model is not None:
            check_model(data, model_hash(model), allow_model_mismatch, name)
        if data.get("example"):
            log.warning("preset %r is a shipped example, not calibrated for your model: run Q-Sched Calibrate", name)
        return (schedule_of(data), data["sampler"], data["steps"])


NODE_CLASS_MAPPINGS = {"QSchedLoadPreset": QSchedLoadPreset}
NODE_DISPLAY_NAME_MAPPINGS = {"QSchedLoadPreset": "Load Q-Sched Preset"}
