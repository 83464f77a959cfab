"""The stand-in's Chinese voices: M2-her answers in the conversation's language, and a Chinese reply has
its own length in characters (fewer: a character holds about a word's worth), its own full stops, no
spaces between words and more characters per token. Same shape as the English voices in standin.py."""

from __future__ import annotations

import re

CHARS_PER_TOKEN = 1.6  # what this stand-in counts for Chinese text (Attune budgets with a lower 1.3)
NATURAL_CHARS = {"slow_burn": 220, "balanced": 140, "fast": 90}

SENTENCES = {
    "slow_burn": [
        "*灯光在她的茶杯边缘缓缓流转，她久久没有说话，只是静静地望着窗外那片渐渐暗下去的天色。*",
        "她让沉默在你们之间慢慢沉淀下来，仿佛每一次呼吸都值得拥有属于它自己的一段空白。",
        "窗外的雨依旧不紧不慢地敲打着玻璃，轻柔而耐心，像是在讲述一个很长很长的故事。",
        "*她的指尖轻轻抚过那张旧木桌的纹路，像是在回忆一件她始终不愿说出口的往事。*",
        "“不用着急，”她轻声说，“再坐一会儿吧，慢慢告诉我你看到了什么。”",
        "烛火微微摇曳，它的影子斜斜地靠在墙上，像一位疲倦却温柔的老朋友。",
        "*她静静地看着热气袅袅升起，思绪早已飘向了很远很远的地方。*",
        "楼下某处，一扇门被轻轻合上，整座房子的宁静便慢慢地将你包围起来。",
        "“我小时候常来这里，”她轻声说道，声音在每个字上都停留得很久很久。",
        "空气里弥漫着雪松和旧纸张的气味，温暖而悠长，就像这个夜晚本身一样从容。",
    ],
    "balanced": [
        "她放下杯子，抬眼看着你。",
        "“我在档案馆里找到了一样东西，”她说着，把一张折好的地图推到桌子对面。",
        "*炉火噼啪作响，她在等你的回答。*",
        "然后她往后一靠，若有所思，朝门口点了点头。",
        "“如果你还愿意去，我们天亮出发，”她补充道。",
        "一辆马车从窗外驶过，她瞥了一眼，又转回头看你。",
        "*她点了点地图上河流转弯的地方。*“这里。他们最后一次出现就是在这里。”",
        "她的语气很平稳，但手一直搭在刀柄上。",
        "“把你知道的告诉我，我也会把我知道的告诉你，”她提议。",
        "店主喊着最后一轮点单，屋里变得热闹了一些。",
    ],
    "fast": [
        "*她已经冲了出去。*",
        "“就现在！走！”",
        "门被猛地撞开！",
        "突然，走廊里脚步声轰响。",
        "*她抓住你的手腕就跑。*",
        "没时间想了！",
        "“左边！不，右边！”",
        "玻璃碎了。有人在喊！",
        "*她翻过栏杆，重重落地。*",
        "“快！他们就在后面！”",
    ],
}
SPOKEN = {
    "slow_burn": [
        "“再陪我一会儿吧，等夜色慢慢沉下来，等蜡烛一点一点燃尽，”她低声说。",
        "“我总会想起小时候的冬天，窗上的霜花，还有那些耐心燃烧的炉火，”她轻声说。",
        "“不管是什么让你今晚来到这里，都可以等茶慢慢凉下来、雨慢慢停下来再说，”她轻轻地说。",
        "“把旅途中的一切都讲给我听吧，每一条蜿蜒的路，每一段久久难忘的对话，”她缓缓说道。",
        "“深夜里的老房子总让人安心，一切都在我们身边轻轻地呼吸，”她低声说。",
        "“有时候沉默比任何解释都更能说明一切，尤其是在彼此懂得的人之间，”她低声说。",
    ],
    "balanced": [
        "“桥断了，我们走浅滩，”她说着，在地图上描出路线。",
        "“我信任你，但我得知道你看到了什么，”她补充道，声音很平稳。",
        "“如果我们骑快一点，天黑前就能到村子，”她提议。",
        "“把实话告诉我，我们再一起想办法，”她说，抬眼看着你。",
        "“门口两个守卫，墙上一个，”她说。“我们能应付。”",
        "“把灯笼带上，”她补充道。“还有地图，以防小路分岔。”",
    ],
    "fast": [
        "“快走！现在！”",
        "“趴下！”",
        "“后面！快！”",
        "“跑！别回头！”",
        "“走楼梯！快点！”",
        "“他们来了！再快点！”",
    ],
}
HOOKS = {
    "slow_burn": "“你在想什么呢？”在一段久久的沉默之后，她轻声问道。",
    "balanced": "“那么，你跟我一起吗？”",
    "fast": "“跳！现在！你到底来不来？”",
}
# What a reader hears of each voice (standin.perceived_pacing adds these to the English marks).
MARKS = {
    "slow_burn": re.compile("缓缓|轻轻|静静|久久|慢慢|悠长|沉默|轻声|低声|耐心|从容|宁静|温柔|飘向|不紧不慢"),
    "fast": re.compile("！|突然|猛地|撞开|冲了|抓住|翻过|碎了|轰响|没时间|快"),
    "balanced": re.compile("看着你|她说|点了点头|等你|补充道|平稳|提议|瞥了一眼|最后一轮|地图|档案馆|天亮|跟我一起"),
}
_CJK = re.compile("[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def is_chinese(text: str) -> bool:
    """Whether a message is mostly in CJK characters (then the stand-in answers in Chinese)."""
    return not text.isascii() and len(_CJK.findall(text)) >= 0.3 * len(text.replace(" ", "") or " ")


def cjk_count(text: str) -> int:
    return len(_CJK.findall(text))
