"""Stage 2: prompting and tools — prompts as code, models wired to the world

See README.md beside this file for the lesson.
"""

import logging

# bitsandbytes (imported by Transformers when a model loads) warns on every CPU start that an optional
# kernel package is missing; we never use its 4-bit kernels here, and a one-line error must stay one line.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
