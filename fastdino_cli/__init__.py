"""fastdino: DINOv2-style self-supervised ViT pretraining with the FastDINOv2 frequency curriculum.

Every subcommand of the ``fastdino`` CLI is a thin wrapper around one library function in this
package, so a notebook can call the same code with the same arguments.
"""

__version__ = "0.2.0"
