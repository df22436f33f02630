"""Hand-written zh and en documents for the corpus tests: clean prose a filter must keep, and
variants each rule must drop."""

EN = ("The city council met on Tuesday to discuss the new library budget. Members of the public were "
      "invited to share their views on the plan, and many of them spoke about the value of reading "
      "programs for children.\nAfter a long debate, the council agreed to fund the library for another "
      "five years, with a small increase for new books and longer opening hours on weekends. The mayor "
      "said that the decision reflects what the people of the town have asked for.")
ZH = ("今天上午，市图书馆举办了一场关于阅读习惯的讲座。来自附近学校的老师和家长们坐满了会场，大家认真地听取了专家的建议。\n"
      "专家认为，孩子的阅读兴趣需要从小培养，家长应该每天抽出时间陪孩子一起读书。讲座结束后，很多家长表示收获很大，"
      "希望图书馆以后能多举办这样的活动。馆长说，图书馆下个月还会开设周末亲子阅读班，欢迎市民报名参加。")
EN_OTHER = ("Scientists at the coastal research station have recorded a steady rise in water temperature "
            "over the past decade. Their measurements show that warmer seas change where fish feed and "
            "breed, which affects the fishing villages along the shore.\nThe team plans to share its data "
            "with local schools so that students can follow the changes themselves, and it hopes that "
            "the project will encourage more young people to study the ocean.")
ZH_OTHER = ("随着气温逐渐升高，郊外的油菜花陆续开放，吸引了不少市民前来踏青赏花。一位带着孩子的母亲说，周末能在田野里走一走，"
            "既放松了心情，也让孩子认识了很多植物。\n当地村民也抓住机会，在路边摆起了小摊，出售自家种的蔬菜和水果。"
            "村干部表示，村里正在修建停车场和公共厕所，希望明年能为游客提供更好的服务。")
