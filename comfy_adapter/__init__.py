"""ComfyUI glue that is not a node: shared by nodes/ and the headless command line. It imports ComfyUI's library
modules (comfy.*, folder_paths) only, never its server or its top-level `nodes` module."""
