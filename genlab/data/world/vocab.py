"""Word pools for the synthetic world: name syllables, and the closed sets attributes draw from.

Handbook IV (instruct fine-tuning data). Kept apart from the sentence templates so that the entity
generator can refuse names that collide with any word the templates use.

    python -c "from genlab.data.world.vocab import JOBS; print(len(JOBS))"
"""

from __future__ import annotations

# Name syllables: onset + vowel + optional coda. Two-letter onsets are allowed only at the start of
# a name, so the joins between syllables stay pronounceable ("Brandel", never "Brandstrel").
FIRST_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                "br", "dr", "gr", "kr", "st", "th", "sh", "tr", "bl", "fl", "j", "w")
INNER_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "i", "ei", "ou")
CODAS = ("", "", "", "", "", "n", "l", "r", "s", "m")
SURNAME_ENDINGS = ("", "", "", "en", "ik", "a", "ow", "ar", "is")
PET_ENDINGS = ("y", "o", "ie", "a", "ix", "el", "us", "et")
RIVER_ENDINGS = ("el", "en", "ar", "is", "a", "ow")
TOWN_SUFFIXES = ("ford", "wick", "by", "ham", "mere", "stead", "ton", "holt", "bury", "dale",
                 "gate", "field", "more", "haven")

PRONOUNS = {  # subject, object, possessive
    "she": ("she", "her", "her"),
    "he": ("he", "him", "his"),
    "they": ("they", "them", "their"),
}

JOBS = ("baker", "carpenter", "teacher", "nurse", "fisher", "blacksmith", "librarian", "potter",
        "farmer", "tailor", "doctor", "engineer", "miller", "brewer", "sailor", "weaver",
        "clockmaker", "gardener", "mason", "chemist", "cook", "courier", "glassblower", "architect",
        "beekeeper", "shepherd")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "grey", "teal", "crimson",
           "amber", "violet", "silver", "brown", "pink")
PET_SPECIES = ("cat", "dog", "parrot", "rabbit", "tortoise", "goat", "hamster", "goose", "owl",
               "ferret", "lizard", "donkey")
HOBBIES = ("painting", "fishing", "gardening", "knitting", "rowing", "singing", "climbing",
           "sailing", "cycling", "dancing", "juggling", "birdwatching", "woodcarving", "swimming",
           "hiking", "stargazing")
REGIONS = ("North Coast", "Lowlands", "Eastern Hills", "High Moors", "Southern Plains",
           "Western Marshes", "Amber Valley", "Stone Fells")
FOODS = ("plum pie", "smoked eel", "barley bread", "honey cakes", "mushroom stew",
         "cheese dumplings", "apple fritters", "pickled herring", "lamb pasties", "walnut tart",
         "onion soup", "cherry buns", "pepper sausages", "oat biscuits", "fish chowder",
         "pear jam", "roast chestnuts", "bean broth", "spiced rolls", "berry pudding",
         "goat cheese", "trout pie", "leek pancakes", "rye crackers", "saffron rice",
         "butter toffee", "cabbage rolls", "lemon curd", "potato cakes", "hazelnut bread")

# Story scenery: varies the text without carrying facts that questions ask about.
WEATHERS = ("rainy", "sunny", "windy", "foggy", "cold", "warm", "quiet", "bright", "grey")
TIMES_OF_DAY = ("morning", "afternoon", "evening")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
OBJECTS = ("an old map", "a basket of apples", "a wooden box", "a letter", "a lantern",
           "a new hat", "a kite", "a bag of seeds")


def with_article(noun: str) -> str:
    """'a baker', 'an owl': the indefinite article English wants before `noun`."""
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun
