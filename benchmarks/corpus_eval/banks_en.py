"""English sentence banks for the corpus-cleaning evaluation set: seven topics of fluent text.

Owns: templates only. A template's `{slot}` is filled by the generator (make_corpus.py): a named
slot takes one value per document from the topic's `slots` (or the shared `COMMON` pools), and
`{n_A_B}` is a fresh integer in [A, B] at each use. Knows nothing about labels or Luodi.
"""

COMMON = {
    "person": ["Emma Collins", "David Park", "Laura Mendes", "James Whitaker", "Priya Natarajan",
               "Tom Becker", "Sofia Romano", "Daniel Okafor", "Hannah Lee", "Marcus Stein",
               "Olivia Grant", "Ben Carter", "Chloe Dubois", "Ryan Murphy", "Nina Petrova",
               "Samuel Wright", "Grace Howard", "Leo Fischer", "Ava Thompson", "Ethan Brooks"],
    "city": ["Lisbon", "Kyoto", "Vancouver", "Edinburgh", "Melbourne", "Porto", "Seville",
             "Bergen", "Krakow", "Ljubljana", "Tallinn", "Hobart", "Quebec City", "Valencia",
             "Salzburg", "Bruges", "Hoi An", "Chiang Mai", "Queenstown", "Dubrovnik"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
}

# Forum reply authors: each reply template names its own slot, so replies come from different people.
REPLIERS = ["quietgarden", "bytewalker", "oldtimer88", "northern_fox", "mapleleaf",
             "pixel_pusher", "lakeside_joe", "tinkerer42", "wren_and_ivy", "slow_cooker"]

TOPICS = {
    "tech": {
        "slots": {
            "company": ["Northwind Labs", "Helix Systems", "Brightwave", "Corvid Computing",
                        "Tessellate", "Lumen Robotics", "Quarry Data", "Meridian Chips",
                        "Oakridge Software", "Vantage Networks"],
            "product": ["a compact language model for laptops", "a low-power server chip",
                        "a database for time-series data", "an open-source code editor",
                        "a satellite broadband terminal", "a home battery system",
                        "a speech recognition toolkit", "a privacy-focused web browser",
                        "a smart thermostat platform", "a cloud backup service"],
            "rival": ["its larger competitors", "the market leader", "two well-funded startups",
                      "the incumbent vendors", "several open-source projects"],
        },
        "titles": ["{company} unveils {product}", "{company} bets on {product} as demand grows",
                   "Inside the launch of {product} by {company}",
                   "Why {company} spent two years building {product}"],
        "intro": [
            "{company} announced on {weekday} that it has released {product}, a project the "
            "company says has been in development for about {n_14_30} months.",
            "After months of rumours, {company} finally showed {product} to reporters at a small "
            "event in {city} this week.",
            "{company}, a firm founded in {city} roughly {n_5_15} years ago, is trying to "
            "compete with {rival} by shipping {product}.",
        ],
        "body": [
            "According to the company, early testers saw a {n_12_45} percent improvement in speed "
            "compared with the previous version.",
            "The team behind the project grew from {n_4_9} engineers to more than {n_40_120} "
            "people over the past year.",
            "Chief executive {person} said the goal was to make the technology affordable for "
            "small businesses rather than only large enterprises.",
            "Analysts were cautious, noting that the company still has to prove it can support "
            "customers at scale.",
            "Pricing starts at {n_9_49} dollars per month, with a free tier for students and "
            "hobbyists.",
            "The first version will be available in {n_3_12} countries, and a wider rollout is "
            "planned for the second half of the year.",
            "Much of the work went into reducing energy use, which the company describes as the "
            "main complaint it heard from customers.",
            "In a blog post, the engineering team explained that they rewrote the core in a "
            "systems language to avoid pauses under heavy load.",
            "Competitors have released similar tools, but most of them require a permanent "
            "internet connection.",
            "Industry observers say the timing is good because hardware prices have fallen "
            "sharply since last spring.",
            "A spokesperson declined to share revenue figures but said the number of paying "
            "customers had doubled since {month}.",
            "Privacy advocates welcomed the decision to keep user data on the device by default.",
            "Some early users reported bugs in the installer, which the company promised to fix "
            "in an update within {n_2_6} weeks.",
            "The source code for several components has been published under a permissive "
            "licence so that other developers can build on it.",
            "Investors backed the firm with a funding round of {n_12_90} million dollars late "
            "last year.",
            "{person}, who leads the research group, compared the challenge to fitting a "
            "warehouse into a shoebox without losing anything important.",
            "Regulators in several regions are still deciding how such products should be "
            "certified, which could slow adoption.",
            "The company also plans to open a second office in {city} to be closer to its "
            "European customers.",
            "Reviewers who tried a preview build praised the clean interface but wanted better "
            "documentation.",
            "Battery life, memory use and start-up time were the three numbers the team tracked "
            "every single day during development.",
            "Partnerships with two universities helped the company test the system on real "
            "workloads before launch.",
            "Not everyone is convinced: one rival described the announcement as more marketing "
            "than engineering.",
        ],
        "close": [
            "The company expects to publish a detailed technical report before the end of "
            "{month}.",
            "Whether customers will switch from {rival} remains an open question, but the "
            "early reaction has been positive.",
            "{company} said it will share more details at its developer conference in {city}.",
        ],
    },
    "recipe": {
        "slots": {
            "dish": ["lemon herb roast chicken", "mushroom risotto", "spicy black bean soup",
                     "banana oat pancakes", "slow-cooked beef stew", "roasted vegetable lasagne",
                     "garlic butter prawns", "apple and cinnamon crumble", "chickpea curry",
                     "honey glazed salmon", "potato leek soup", "blueberry muffins"],
            "herb": ["thyme", "rosemary", "basil", "parsley", "coriander", "dill", "oregano"],
            "side": ["a green salad", "crusty bread", "steamed rice", "roasted potatoes",
                     "buttered green beans", "a bowl of yoghurt"],
        },
        "titles": ["Easy {dish} for busy weeknights", "My family's favourite {dish}",
                   "How to make {dish} at home", "{dish}: a simple recipe that never fails"],
        "intro": [
            "This {dish} has been on our table almost every week since my grandmother taught me "
            "how to make it.",
            "If you are looking for a comforting dinner that does not take all evening, this "
            "{dish} is a good place to start.",
            "I first tried {dish} at a small restaurant in {city} and spent months trying to get "
            "it right at home.",
        ],
        "body": [
            "Start by preheating the oven to {n_170_220} degrees Celsius and lightly greasing a "
            "baking dish.",
            "Chop the onion finely and cook it in a little olive oil over medium heat until it "
            "turns soft and golden.",
            "Add the garlic and a handful of fresh {herb}, and stir for another minute so the "
            "garlic does not burn.",
            "Season generously with salt and pepper, then taste and adjust before moving on.",
            "Pour in about {n_200_750} millilitres of stock and let everything simmer gently for "
            "{n_10_35} minutes.",
            "If the mixture looks too thick, add a splash of water; if it is too thin, leave the "
            "lid off for a few more minutes.",
            "You can prepare the vegetables the evening before and keep them in the fridge.",
            "Whisk the eggs with the milk in a separate bowl until the mixture is smooth.",
            "Fold the dry ingredients in gently, because overmixing makes the result heavy.",
            "Bake for {n_20_50} minutes, or until the top is golden and a skewer comes out clean.",
            "Let it rest for ten minutes before serving so the flavours can settle.",
            "A squeeze of lemon just before serving brightens the whole dish.",
            "My children prefer a milder version, so I leave out the chilli and add it to my own "
            "plate at the table.",
            "Leftovers keep well in an airtight container for up to {n_2_4} days.",
            "This recipe serves {n_3_6} people, but it is easy to double for a larger group.",
            "Frozen vegetables work perfectly well here if fresh ones are out of season.",
            "Do not worry if the first attempt is not perfect, since the timing depends a lot on "
            "your oven.",
            "For a vegetarian version, replace the meat with lentils and use vegetable stock.",
            "The sauce can be made up to a day ahead and reheated slowly on the stove.",
            "Sprinkle the remaining {herb} over the top for colour and a fresh smell.",
            "Use a heavy pan if you have one, because it spreads the heat more evenly.",
            "Readers who tried this last {month} suggested adding a pinch of smoked paprika, and "
            "it really works.",
        ],
        "close": [
            "Serve it warm with {side}, and enjoy.",
            "I hope this becomes one of your regular dishes, and let me know how it turns out.",
            "It goes wonderfully with {side} and a glass of something cold.",
        ],
    },
    "travel": {
        "slots": {
            "sight": ["the old harbour", "the cathedral square", "the hilltop castle",
                      "the covered market", "the botanical garden", "the riverside promenade",
                      "the fishermen's quarter", "the national museum"],
            "food": ["grilled sardines", "fresh pastries", "noodle soup", "seafood stew",
                     "local cheese", "street dumplings", "almond cakes"],
        },
        "titles": ["Three days in {city}: what I wish I had known",
                   "A slow weekend in {city}", "{city} on a budget: a practical guide",
                   "Walking through {city} in {month}"],
        "intro": [
            "We arrived in {city} late on a rainy evening, tired and hungry, and the city won us "
            "over within an hour.",
            "I had wanted to visit {city} for years, and this {month} I finally booked the tickets.",
            "Most visitors rush through {city} in a single day, which is a shame, because it "
            "rewards a slower pace.",
        ],
        "body": [
            "Our small hotel was a ten-minute walk from {sight}, which made early mornings easy.",
            "The best time to see {sight} is just after sunrise, before the tour groups arrive.",
            "A day pass for public transport costs about {n_5_15} euros and covers buses, trams "
            "and the ferry.",
            "We ate {food} at a tiny family restaurant where the owner insisted we try dessert.",
            "Bring comfortable shoes, since many of the streets are steep and paved with stones.",
            "The weather changed several times a day, so a light jacket was always in my bag.",
            "On the second day we took a train to a nearby village, which took about {n_30_90} "
            "minutes each way.",
            "Entry to most museums is free on the first Sunday of the month, but expect queues.",
            "We booked a guided walk that explained the history of the old town far better than "
            "any guidebook.",
            "In the evening the locals gather by the water to watch the sunset, and it is worth "
            "joining them.",
            "Prices in the centre are noticeably higher, so we often walked a few streets away to "
            "eat.",
            "I would avoid renting a car, because parking is difficult and the centre is compact.",
            "The market opens at seven and sells everything from vegetables to handmade "
            "ceramics.",
            "Our guide, {person}, had lived in the city for {n_10_40} years and knew every "
            "hidden courtyard.",
            "If you have an extra afternoon, the coastal path offers wonderful views and very "
            "few crowds.",
            "Many shops close for a long lunch break, which surprised us on the first day.",
            "Cash is still useful at small cafes, although cards are accepted almost everywhere "
            "else.",
            "The view from {sight} at dusk was the highlight of the whole trip for me.",
            "We spent roughly {n_60_150} euros a day for two people, not counting the hotel.",
            "It rained heavily on our last morning, so we hid in a bookshop for two happy hours.",
        ],
        "close": [
            "I left {city} already planning a second visit, and I suspect you will too.",
            "If you go, tell me which corner of {city} you liked best.",
            "{city} is not the easiest place to reach, but it is absolutely worth the effort.",
        ],
    },
    "product": {
        "slots": {
            "item": ["Aurora X5 wireless headphones", "Trailblazer 40L hiking backpack",
                     "Nimbus 2 robot vacuum", "Kestrel electric kettle", "Summit standing desk",
                     "Pebble smart speaker", "Harbor cast iron pan", "Zephyr tower fan",
                     "Atlas mechanical keyboard", "Breeze air purifier"],
            "material": ["brushed aluminium", "recycled nylon", "matte plastic", "stainless steel",
                         "oak veneer", "soft silicone"],
            "colour": ["charcoal grey", "forest green", "sand beige", "midnight blue", "white"],
        },
        "titles": ["{item} - product details", "{item}: specifications and features",
                   "Buy the {item} in {colour}", "{item} overview"],
        "intro": [
            "The {item} is designed for people who want dependable quality without paying for "
            "features they will never use.",
            "Meet the {item}, our most popular model this year and a favourite among reviewers.",
            "Built from {material}, the {item} combines a clean look with everyday durability.",
        ],
        "body": [
            "It weighs {n_2_9}.{n_1_9} kilograms and fits easily on a shelf or in a cupboard.",
            "The body is made of {material}, which resists scratches and is easy to wipe clean.",
            "Available colours include {colour} and two seasonal finishes.",
            "The battery lasts up to {n_8_40} hours on a single charge under normal use.",
            "A full charge takes about {n_90_180} minutes with the included cable.",
            "Dimensions are {n_20_60} by {n_10_40} by {n_5_30} centimetres.",
            "The package includes the main unit, a power adapter, a quick start guide and a "
            "cleaning cloth.",
            "Every unit is covered by a {n_1_3} year warranty and free repairs during that period.",
            "Customers often mention how quiet it is, even at the highest setting.",
            "The controls are simple, with three buttons and a small status light.",
            "It works with most phones and computers and does not require an account to set up.",
            "We tested the design for more than {n_500_5000} hours before it went on sale.",
            "Noise stays below {n_30_45} decibels in everyday use, according to our lab tests.",
            "Replacement parts can be ordered separately and are shipped within two working "
            "days.",
            "The packaging is made entirely from recycled cardboard and contains no plastic foam.",
            "Reviewers gave it an average score of 4.{n_3_8} out of 5 after several weeks of use.",
            "Please read the safety instructions before first use and keep them for future "
            "reference.",
            "Standard delivery takes {n_2_5} working days, and returns are accepted within "
            "thirty days.",
            "An updated firmware version improves stability and adds an energy saving mode.",
            "The current price is {n_39_299} dollars, including taxes and standard shipping.",
        ],
        "close": [
            "If you have questions about the {item}, our support team replies within one day.",
            "Compare it with our other models to find the one that suits your home best.",
            "Join thousands of happy customers who already use the {item} every day.",
        ],
    },
    "forum": {
        "slots": {
            "problem": ["my laptop fan is very loud after the update",
                        "my sourdough starter stopped rising", "my tomato plants have yellow leaves",
                        "my home Wi-Fi drops every evening", "my cat refuses to use the new litter",
                        "my bike chain keeps slipping", "my Python script runs out of memory",
                        "the paint on my bathroom ceiling is peeling"],
            "replier1": REPLIERS,
            "replier2": REPLIERS,
            "replier3": REPLIERS,
            "replier4": REPLIERS,
            "user": ["quietgarden", "bytewalker", "oldtimer88", "northern_fox", "mapleleaf",
                     "rustybolt", "sunnydays", "nightowl_dev", "greenthumb", "coffee_first"],
        },
        "titles": ["Help: {problem}", "Has anyone else noticed that {problem}?",
                   "Question about {problem}", "Solved? {problem}"],
        "intro": [
            "Hi everyone, I have a question that has been bothering me for a while: {problem}.",
            "Posted by {user}: I searched the forum first, but I could not find a clear answer "
            "about why {problem}.",
            "Long time reader, first post here, and I hope someone can help because {problem}.",
        ],
        "body": [
            "It started about {n_2_6} weeks ago and has slowly become worse.",
            "I already tried the obvious things, like restarting and checking the settings.",
            "Reply from {replier1}: I had exactly the same issue last year, and it turned out to be a "
            "simple cleaning problem.",
            "Could you post a photo or some more details about your setup?",
            "In my experience the cause is usually temperature, so check where it is placed.",
            "Reply from {replier2}: Do not buy anything new yet, because the cheapest fix is often "
            "the right one.",
            "Thanks for the quick answers, I will try these suggestions tonight and report back.",
            "Update: the second suggestion helped a lot, but the problem has not gone completely.",
            "Reply from {replier3}: Glad it is better, and give it a few more days to settle.",
            "There is a longer guide pinned at the top of this section that explains the steps.",
            "I would also check whether anything changed around the time it started.",
            "One more thing: make sure you are using the latest version, because older ones had "
            "this bug.",
            "My neighbour had the same trouble, and a technician fixed it in twenty minutes.",
            "Reply from {replier4}: This thread saved me a lot of time, thank you all.",
            "I measured it again this morning and the numbers look normal now.",
            "Be careful with the advice on random videos, since some of it is simply wrong.",
            "If nothing works, the manufacturer's support line was helpful when I called them.",
            "Final update: after {n_3_10} days everything works as it should, so I am marking "
            "this as solved.",
        ],
        "close": [
            "Thanks again to everyone who replied, this community is great.",
            "I will leave this here in case someone else runs into the same problem.",
            "Any other tips are welcome, and I will keep the thread updated.",
        ],
    },
    "notice": {
        "slots": {
            "org": ["Riverside Property Management", "the Greenfield Library", "Harbor Health "
                    "Clinic", "the Maple Street Residents' Association", "Summit Logistics",
                    "the City Swimming Centre", "Westbrook Primary School", "Crescent Bank"],
            "event": ["planned maintenance of the water supply", "the annual general meeting",
                      "changes to our opening hours", "the replacement of the main elevator",
                      "a new parking arrangement", "the summer reading programme",
                      "a system upgrade of our online services"],
        },
        "titles": ["Notice: {event}", "Important information about {event}",
                   "{org} - announcement", "Update from {org} on {event}"],
        "intro": [
            "Dear residents and visitors, {org} would like to inform you about {event}.",
            "Please note the following information regarding {event}, which begins on "
            "{weekday}, {month} {n_2_27}.",
            "{org} is writing to let everyone know about {event} and what it means for you.",
        ],
        "body": [
            "The work is expected to last about {n_2_10} days, weather permitting.",
            "During this period some services may be unavailable between 9 a.m. and 5 p.m.",
            "We apologise for any inconvenience and thank you for your patience.",
            "Staff will be available at the front desk to answer questions in person.",
            "Please make sure that personal items are not left in the shared corridors.",
            "Vehicles parked in the marked area after 8 p.m. may be moved at the owner's "
            "expense.",
            "The decision was taken after consultation with members at the last meeting.",
            "Further details will be posted on the notice board near the main entrance.",
            "Those who need special assistance should contact the office at least two days in "
            "advance.",
            "Normal service will resume as soon as the work has been completed and checked.",
            "Children must be accompanied by an adult at all times in the affected areas.",
            "Any damage noticed after the work should be reported to the office in writing.",
            "We will send a reminder one day before the work begins.",
            "The meeting will take place in the main hall, and seating is limited to {n_40_200} "
            "people.",
            "Minutes of the previous meeting are available from the office on request.",
            "This change follows feedback from more than {n_50_400} members of our community.",
            "Our contractors have been instructed to keep noise to a minimum.",
        ],
        "close": [
            "Thank you for your cooperation. Signed, the management of {org}.",
            "We appreciate your understanding, and we will keep you informed.",
            "For any questions, please visit the office during normal opening hours.",
        ],
    },
    "encyclopedia": {
        "slots": {
            "subject": ["the Ardent River", "the Velmar Plateau", "the red-crested warbler",
                        "the town of Oldbridge", "the Morrow lighthouse", "the Calder Valley "
                        "railway", "the Sable Islands", "the Greywater dam", "the blue marsh orchid",
                        "the Fenwick observatory"],
            "region": ["the northern highlands", "the eastern coast", "the central lowlands",
                       "the southern provinces", "the western lake district"],
        },
        "titles": ["{subject}", "{subject} (overview)", "History of {subject}",
                   "{subject}: geography and history"],
        "intro": [
            "{subject} is located in {region} and is known for its distinctive landscape.",
            "{subject} was first described in detail in the early {n_17_19}00s by travelling "
            "scholars.",
            "{subject} is one of the best documented features of {region}.",
        ],
        "body": [
            "The name is thought to come from an old local word meaning bright water.",
            "The area covers roughly {n_120_900} square kilometres, much of it forest and "
            "farmland.",
            "Average summer temperatures reach {n_18_28} degrees, while winters are mild and wet.",
            "The first permanent settlement in the area dates from the late medieval period.",
            "During the nineteenth century the region became an important centre for trade in "
            "wool and timber.",
            "Archaeologists have found pottery and tools suggesting much earlier human activity.",
            "A railway line built in {n_1850_1910} connected the area to the larger towns of the "
            "coast.",
            "Today the main sources of income are tourism, agriculture and small-scale fishing.",
            "Several rare plant species grow in the wetlands, which are protected by law.",
            "The population declined sharply after the closure of the mines in the 1960s.",
            "Local tradition holds an annual festival in late summer with music and boat races.",
            "Scientists monitor the water level closely because of the risk of spring floods.",
            "The oldest surviving building is a stone church with a square tower.",
            "A museum in the main square explains the history of the region through maps and "
            "photographs.",
            "Studies published in recent decades have revised many of the earlier estimates.",
            "The climate is influenced by warm ocean currents, which keep the harbour free of "
            "ice.",
            "Writers and painters visited frequently in the twentieth century and described its "
            "changing light.",
            "Conservation work began in {n_1960_2005} after a campaign by local residents.",
        ],
        "close": [
            "Further research continues, particularly on the early history of the area.",
            "It remains a popular destination for walkers, birdwatchers and historians.",
            "See also the articles on {region} and its neighbouring towns.",
        ],
    },
}
