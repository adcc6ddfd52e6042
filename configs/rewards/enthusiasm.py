"""An example text reward: enthusiastic, medium-length reviews.

Used as ``rlhf train configs/text_rlhf.yaml stages=[ppo] text.init_from=RUN
text.reward_function=configs/rewards/enthusiasm.py``. The signature is all that matters:
``reward_function(prompt: str, response: str) -> float``.
"""

POSITIVE = {"good", "great", "excellent", "amazing", "fantastic", "wonderful", "lovely", "delicious", "tasty",
            "friendly", "recommend", "loved", "enjoyed", "liked"}


def reward_function(prompt: str, response: str) -> float:
    words = response.replace(".", " ").split()
    enthusiasm = sum(w in POSITIVE for w in words) - 2 * ("not" in words)
    return float(enthusiasm) - 0.2 * abs(len(words) - 8)
