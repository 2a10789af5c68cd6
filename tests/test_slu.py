from pasu.slu import known_intents, split_intent


def test_intent_inventory_is_shipped():
    labels = known_intents()
    assert "alarm_set" in labels and len(labels) == 54


def test_split_intent():
    assert split_intent("alarm_set wake me up at seven am") == ("alarm_set", "wake me up at seven am")
    assert split_intent("weather_query") == ("weather_query", "")
    assert split_intent("wake me up") == (None, "wake me up")
    assert split_intent("  ") == (None, "  ")
    assert split_intent("i' lx lxh") == (None, "i' lx lxh")
