"""The words of a synthetic utterance: sentence templates and their filling.

An utterance whose text carries its emotion gets wording from that label's
templates (or from its label pair's); otherwise a plain neutral sentence.
"""
from __future__ import annotations

import numpy as np

SLOTS = {
    "thing": (
        "the new project", "the report", "this plan", "the meeting", "our trip",
        "the results", "the new office", "your message", "the game", "the budget",
        "the garden", "the party",
    ),
    "person": (
        "my sister", "our manager", "the neighbor", "my friend", "the team",
        "your cousin", "the teacher", "my father",
    ),
    "time": ("today", "this morning", "last night", "this week", "yesterday", "on Monday"),
}

NEUTRAL_TEMPLATES = (
    "I need to check {thing} {time}.",
    "We talked about {thing} {time}.",
    "{person} will send the letter later.",
    "Please put the files on my desk.",
    "The train leaves from the second platform.",
    "Let me look at {thing} first.",
    "I think the room is on the left.",
    "{person} asked about {thing} {time}.",
    "We should finish the list before lunch.",
    "The printer is next to the kitchen.",
    "Can you read {thing} again?",
    "I moved {thing} to the other folder.",
    "The bus was on time {time}.",
    "We can discuss {thing} after the call.",
    "{person} has a copy of the schedule.",
)

EMOTION_TEMPLATES = {
    "happiness": (
        "I am so happy about {thing}!",
        "This is wonderful news about {thing}.",
        "I love how {thing} turned out!",
        "{person} made my day {time}.",
        "What a great day, I feel fantastic.",
        "I am thrilled that {thing} went so well.",
        "That was the best news I heard {time}.",
        "We did it, this is amazing!",
        "I am really glad {person} could join us.",
        "Everything about {thing} makes me smile.",
        "Thank you so much, this is perfect!",
        "I feel so lucky and grateful {time}.",
    ),
    "sadness": (
        "I feel so sad about {thing}.",
        "I miss {person} so much {time}.",
        "Nothing went right {time}, I feel terrible.",
        "It breaks my heart to hear that.",
        "I am really disappointed about {thing}.",
        "{person} is leaving and I feel lonely.",
        "I wish things had turned out differently.",
        "I cried all night about {thing}.",
        "Everything feels hopeless and empty {time}.",
        "I am so sorry, this is awful news.",
        "We lost {thing} and I feel miserable.",
        "I feel down and tired of everything.",
    ),
    "anger": (
        "I am furious about {thing}!",
        "This is completely unacceptable, fix it now!",
        "How dare {person} ignore me again!",
        "I am sick and tired of {thing}.",
        "Stop wasting my time with {thing}!",
        "{person} ruined everything {time}, I am so mad.",
        "That makes me so angry!",
        "I hate the way {person} treats us.",
        "Do not ever lie to me again!",
        "This is outrageous, I want answers now!",
        "I told you twice, and you ignored me!",
        "I am so annoyed with {thing} {time}.",
    ),
    "surprise": (
        "Wow, I did not expect {thing}!",
        "What, {person} is here {time}?",
        "No way, are you serious?",
        "I cannot believe {thing} is already done!",
        "Really? That happened {time}?",
        "Oh my goodness, what a surprise!",
        "Wait, {person} said what?",
        "That is so unexpected, I am shocked!",
        "I never saw that coming!",
        "You finished {thing} already?",
        "Oh, I had no idea about {thing}!",
        "Seriously, {person} won the prize?",
    ),
}

# Wording that carries both labels of a pair; keyed by the sorted pair.
PAIR_TEMPLATES = {
    ("happiness", "surprise"): (
        "Wow, I cannot believe we actually won!",
        "What a wonderful surprise, thank you so much!",
        "No way, {person} got the job, amazing!",
        "Oh wow, {thing} turned out great!",
    ),
    ("anger", "sadness"): (
        "I am angry and hurt by {person}.",
        "How could you do this, I trusted you.",
        "I am upset and so disappointed {time}.",
        "This is unfair and it breaks my heart.",
    ),
    ("sadness", "surprise"): (
        "Oh no, I did not expect {thing} to fail.",
        "What, {person} is gone? That is so sad.",
        "I cannot believe we lost {thing}.",
        "Oh no, really? That is terrible news.",
    ),
    ("anger", "surprise"): (
        "What? {person} stopped {thing} without asking?",
        "Are you kidding me, they did what?",
        "Seriously? Who broke {thing} again?",
        "You did what? That is outrageous!",
    ),
}

MIN_WORDS, MAX_WORDS = 4, 10


def fill_template(rng: np.random.Generator, templates: tuple[str, ...]) -> str:
    """A sentence from one of the templates with its slots filled, 4-10 words."""
    # Slot words vary in length, so redraw until the sentence fits; every
    # template has fillings that fit, so this ends after a few tries.
    while True:
        template = templates[rng.integers(len(templates))]
        words = {name: options[rng.integers(len(options))] for name, options in SLOTS.items()}
        text = template.format(**words)
        text = text[0].upper() + text[1:]
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return text


def utterance_text(rng: np.random.Generator, labels: list[str], text_cue: bool) -> str:
    if not text_cue or labels == ["neutral"]:
        return fill_template(rng, NEUTRAL_TEMPLATES)
    if len(labels) == 2:
        return fill_template(rng, PAIR_TEMPLATES[tuple(sorted(labels))])
    return fill_template(rng, EMOTION_TEMPLATES[labels[0]])
