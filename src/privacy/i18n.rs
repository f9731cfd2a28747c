//! The privacy centre's texts in Kazakh, Russian and English. Every message is a variant of
//! [`T`] whose definition must name all three languages (the macro takes exactly three), so
//! a missing translation does not compile. Labels of schema fields, categories, purposes and
//! the like are tables with three columns; configured names without a label show as they are.
//! Placeholders are `{name}` and must match across languages (tested).

/// A language of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lang {
    Kk,
    Ru,
    En,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Kk, Lang::Ru, Lang::En];

    /// The BCP 47 code, for `lang` attributes and `?lang=`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Kk => "kk",
            Lang::Ru => "ru",
            Lang::En => "en",
        }
    }

    /// The language's own name, for the language switch.
    pub fn endonym(self) -> &'static str {
        match self {
            Lang::Kk => "Қазақша",
            Lang::Ru => "Русский",
            Lang::En => "English",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Lang::ALL.into_iter().find(|l| l.code().eq_ignore_ascii_case(code.trim()))
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The page's language: `?lang=` if it names one, else the best of `Accept-Language`
    /// (by q-value, then order), else the configured default.
    pub fn negotiate(query: Option<&str>, accept_language: Option<&str>, default: Lang) -> Lang {
        if let Some(l) = query.and_then(Lang::parse) {
            return l;
        }
        let mut best: Option<(f32, Lang)> = None;
        for item in accept_language.unwrap_or_default().split(',').take(32) {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or_default().trim();
            let primary = tag.split('-').next().unwrap_or_default();
            let q = parts.filter_map(|p| p.trim().strip_prefix("q=")).next().map(|q| q.trim().parse::<f32>().unwrap_or(0.0)).unwrap_or(1.0);
            if let Some(l) = Lang::parse(primary).filter(|_| q > 0.0) {
                if best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map(|(_, l)| l).unwrap_or(default)
    }
}

macro_rules! texts {
    ($($key:ident => [$kk:literal, $ru:literal, $en:literal $(,)?],)*) => {
        /// A message of the privacy centre.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum T { $($key,)* }

        impl T {
            pub const ALL: &'static [T] = &[$(T::$key,)*];

            /// The message in `lang`.
            pub fn get(self, lang: Lang) -> &'static str {
                let all: [&'static str; 3] = match self { $(T::$key => [$kk, $ru, $en],)* };
                all[lang.index()]
            }
        }
    };
}

texts! {
    Title => ["Құпиялылық орталығы", "Центр конфиденциальности", "Privacy centre"],
    Intro => [
        "Кредитор сіз туралы сақтайтын дербес деректер және оларды кім, не үшін пайдаланғаны. Мұнда деректерді түзетуге, келісімдерді кері қайтарып алуға, көшірмесін жүктеп алуға немесе жоюды сұрауға болады.",
        "Персональные данные, которые кредитор хранит о вас, и кто и для чего ими пользовался. Здесь можно исправить данные, отозвать согласия, скачать копию или потребовать удаления.",
        "The personal data the lender keeps about you, and who used it and why. Here you can correct it, withdraw consents, download a copy or ask for it to be erased.",
    ],
    Reference => ["Кредитордағы нөміріңіз", "Ваш номер у кредитора", "Your reference at the lender"],
    LinkValidUntil => ["Сілтеме {time} дейін жарамды.", "Ссылка действует до {time}.", "This link works until {time}."],
    Language => ["Тіл", "Язык", "Language"],
    Contents => ["Мазмұны", "Содержание", "Contents"],
    DataHeading => ["Сіздің деректеріңіз", "Ваши данные", "Your data"],
    DataIntro => [
        "Санаттар бойынша топтастырылған. Өтінімде көрсеткен деректерді түзете аласыз; қалғанын кредитор немесе оның сайты жазған.",
        "Сгруппированы по категориям. Данные, которые вы указали в заявке, можно исправить; остальные записаны кредитором или его сайтом.",
        "Grouped by category. You can correct what you gave in your application; the rest was recorded by the lender or its website.",
    ],
    NoData => ["Деректер жоқ.", "Данных нет.", "No data held."],
    ReadOnlyNote => [
        "Кредитор жазған; түзету үшін кредиторға хабарласыңыз.",
        "Записано кредитором; для исправления обратитесь к кредитору.",
        "Recorded by the lender; to correct it, contact the lender.",
    ],
    Correct => ["Түзету", "Исправить", "Correct"],
    NewValue => ["Жаңа мәні", "Новое значение", "New value"],
    SaveCorrection => ["Түзетуді сақтау", "Сохранить исправление", "Save correction"],
    ConsentsHeading => ["Келісімдер", "Согласия", "Consents"],
    ConsentsIntro => [
        "Сіз берген келісімдер және олар берілген құпиялылық саясатының нұсқасы. Кері қайтарып алу бірден күшіне енеді: осы мақсатпен келесі пайдалануға тыйым салынады.",
        "Согласия, которые вы дали, и версия политики конфиденциальности, по которой они даны. Отзыв действует сразу: следующее использование для этой цели будет отклонено.",
        "The consents you gave, and the version of the privacy policy they were given under. Withdrawing takes effect at once: the next use for that purpose is refused.",
    ],
    NoConsents => ["Келісімдер жоқ.", "Согласий нет.", "No consents on record."],
    PolicyVersion => ["Саясат нұсқасы", "Версия политики", "Policy version"],
    Given => ["Берілді", "Дано", "Given"],
    ValidUntil => ["Жарамдылық мерзімі", "Действует до", "Valid until"],
    WithdrawnAt => ["Кері қайтарылды", "Отозвано", "Withdrawn"],
    InForce => ["Күшінде", "Действует", "In force"],
    Withdrawn => ["Кері қайтарылған", "Отозвано", "Withdrawn"],
    Expired => ["Мерзімі өткен", "Истекло", "Expired"],
    Covers => ["Қамтиды", "Включает", "Covers"],
    CoversThirdParties => ["үшінші тұлғаларға беру", "передачу третьим лицам", "transfer to third parties"],
    CoversAbroad => ["шетелге беру", "передачу за рубеж", "transfer abroad"],
    Withdraw => ["Келісімді кері қайтарып алу", "Отозвать согласие", "Withdraw consent"],
    ContractsHeading => ["Шарттар", "Договоры", "Contracts"],
    NoContracts => ["Шарттар жоқ.", "Договоров нет.", "No contracts."],
    Opened => ["Ашылды", "Открыт", "Opened"],
    Updated => ["Жаңартылды", "Обновлён", "Updated"],
    HoldsErasure => [
        "Өтелгенге дейін деректерді жоюды тоқтатып тұр",
        "Удерживает удаление данных до погашения",
        "Holds erasure until it is settled",
    ],
    DisclosuresHeading => ["Үшінші тұлғаларға берілген деректер", "Передачи третьим лицам", "Disclosures to third parties"],
    DisclosuresIntro => [
        "Деректеріңізді басқа ұйымға әр беру және оның құқықтық негізі.",
        "Каждая передача ваших данных другой организации и её правовое основание.",
        "Every transfer of your data to another organisation, and the legal basis it was made on.",
    ],
    NoDisclosures => ["Деректер үшінші тұлғаларға берілмеген.", "Данные третьим лицам не передавались.", "Nothing has been disclosed to third parties."],
    Recipient => ["Алушы", "Получатель", "Recipient"],
    Basis => ["Негіз", "Основание", "Basis"],
    LegalReference => ["Құқықтық сілтеме", "Правовая ссылка", "Legal reference"],
    Data => ["Деректер", "Данные", "Data"],
    When => ["Қашан", "Когда", "When"],
    AbroadTransfer => ["Шетелге берілді", "Передано за рубеж", "Sent abroad"],
    AccessHeading => ["Деректеріңізді кім пайдаланды", "Кто использовал ваши данные", "Who used your data"],
    AccessIntro => [
        "Деректеріңізге әр жүгіну тіркеледі. Кім, не үшін және қандай деректер бойынша топтастырылған.",
        "Каждое обращение к вашим данным записывается. Сгруппировано по тому, кто, зачем и к каким данным обращался.",
        "Every use of your data is recorded. Grouped by who, for what purpose, and which data.",
    ],
    NoAccess => ["Деректеріңізді әлі ешкім пайдаланбаған.", "Вашими данными ещё никто не пользовался.", "Nobody has used your data yet."],
    Who => ["Кім", "Кто", "Who"],
    Purpose => ["Мақсаты", "Цель", "Purpose"],
    HowOften => ["Рет саны", "Сколько раз", "Times"],
    LastTime => ["Соңғы рет", "Последний раз", "Last time"],
    DownloadHeading => ["Деректеріңізді жүктеп алу", "Скачать ваши данные", "Download your data"],
    DownloadIntro => [
        "Осы бетте көрсетілгеннің бәрі бар JSON файлы.",
        "Файл JSON со всем, что показано на этой странице.",
        "A JSON file with everything shown on this page.",
    ],
    Download => ["Жүктеп алу (JSON)", "Скачать (JSON)", "Download (JSON)"],
    ErasureHeading => ["Деректеріңізді жою", "Удаление ваших данных", "Erase your data"],
    ErasureIntro => [
        "Жою деректеріңіз шифрланған кілтті жояды: осыдан кейін оларды ешкім оқи алмайды және мұны қайтару мүмкін емес.",
        "Удаление уничтожает ключ, которым зашифрованы ваши данные: после этого их никто не сможет прочитать, и отменить это нельзя.",
        "Erasure destroys the key your data is encrypted with: afterwards nobody can read it, and it cannot be undone.",
    ],
    ErasureHeld => [
        "Сізде әлі өтелмеген шарт бар ({contracts}). Құпиялылық саясатына сәйкес деректер шарт бойынша міндеттемелер орындалғаннан кейін жойылады: сұрауды қазір жіберуге болады, ал жою шарт өтелген бойда өздігінен орындалады.",
        "У вас есть непогашенный договор ({contracts}). По политике конфиденциальности данные удаляются после исполнения обязательств по договору: запрос можно подать сейчас, а удаление выполнится само, как только договор будет погашен.",
        "You have a contract that is not settled yet ({contracts}). Under the privacy policy your data is deleted once the obligations under the contract are fulfilled: you can ask now, and the erasure runs by itself as soon as the contract is settled.",
    ],
    ErasureConfirm => [
        "Деректерім біржола жойылатынын түсінемін.",
        "Я понимаю, что мои данные будут уничтожены безвозвратно.",
        "I understand that my data will be destroyed for good.",
    ],
    EraseButton => ["Деректерімді жою", "Удалить мои данные", "Erase my data"],
    PendingHeading => ["Жою сұралды", "Удаление запрошено", "Erasure requested"],
    Pending => [
        "{time} берілген сұрауыңыз {contracts} шартының өтелуін күтуде. Содан кейін жою өздігінен орындалады; қайта сұраудың қажеті жоқ.",
        "Ваш запрос от {time} ожидает погашения договора {contracts}. Затем удаление выполнится само; повторно обращаться не нужно.",
        "Your request of {time} is waiting for contract {contracts} to be settled. The erasure then runs by itself; you need not ask again.",
    ],
    ErasedHeading => ["Деректеріңіз жойылды", "Ваши данные удалены", "Your data has been erased"],
    Erased => [
        "Деректеріңізді шифрлаған кілт {time} жойылды. Қоймада сіз туралы сақталған ештеңені енді оқу мүмкін емес.",
        "Ключ, которым были зашифрованы ваши данные, уничтожен {time}. Ничего из того, что хранилище держало о вас, больше прочитать нельзя.",
        "The key your data was encrypted with was destroyed on {time}. Nothing the vault held about you can be read any more.",
    ],
    ErasedBackups => [
        "Ескі сақтық көшірмелер де {generation} кілттер буыны жойылғаннан кейін оқылмайды.",
        "Старые резервные копии станут нечитаемыми после уничтожения поколения ключей {generation}.",
        "Older backups become unreadable too once key generation {generation} is destroyed.",
    ],
    KeepReceipt => [
        "Бұл түбіртекті сақтаңыз: ол деректеріңіздің жойылғанын растайды.",
        "Сохраните эту квитанцию: она подтверждает удаление ваших данных.",
        "Keep this receipt: it shows that your data was erased.",
    ],
    Receipt => ["Түбіртек", "Квитанция", "Receipt"],
    RequestedAt => ["Сұралды", "Запрошено", "Requested"],
    ErasedAt => ["Жойылды", "Удалено", "Erased"],
    KeyFingerprint => ["Жойылған кілттің саусақ ізі", "Отпечаток уничтоженного ключа", "Fingerprint of the destroyed key"],
    Statement => ["Техникалық мәлімдеме (ағылшынша)", "Техническое заявление (на английском)", "Technical statement"],
    NoticeRectified => ["«{field}» түзетуі сақталды.", "Исправление «{field}» сохранено.", "Your correction of “{field}” was saved."],
    NoticeRectifyInvalid => [
        "«{field}» жаңа мәнінің пішімі дұрыс емес. Ештеңе өзгертілмеді.",
        "Новое значение «{field}» имеет неверный формат. Ничего не изменено.",
        "The new value for “{field}” is not in the right form. Nothing was changed.",
    ],
    NoticeNotEditable => [
        "Бұл деректерді мұнда түзету мүмкін емес; кредиторға хабарласыңыз.",
        "Эти данные нельзя исправить здесь; обратитесь к кредитору.",
        "This data cannot be corrected here; contact the lender.",
    ],
    NoticeWithdrawn => ["«{purpose}» келісімі кері қайтарылды.", "Согласие «{purpose}» отозвано.", "Your consent for “{purpose}” was withdrawn."],
    NoticePending => [
        "Жою сұрауыңыз тіркелді. Ол шарттың өтелуін күтуде.",
        "Запрос на удаление записан. Он ожидает погашения договора.",
        "Your erasure request was recorded. It is waiting for your contract to be settled.",
    ],
    NoticeErased => ["Деректеріңіз жойылды.", "Ваши данные удалены.", "Your data was erased."],
    NoticeConfirm => [
        "Жоюды растау үшін белгіні қойыңыз.",
        "Отметьте флажок, чтобы подтвердить удаление.",
        "Tick the box to confirm the erasure.",
    ],
    RefusedTitle => ["Бұл сілтемені пайдалану мүмкін емес", "Эту ссылку нельзя использовать", "This link cannot be used"],
    LinkInvalid => [
        "Сілтеме жарамсыз. Құпиялылық орталығын кредитордың сайтынан қайта ашыңыз.",
        "Ссылка недействительна. Откройте центр конфиденциальности заново на сайте кредитора.",
        "The link is not valid. Open the privacy centre again from the lender's website.",
    ],
    LinkExpired => [
        "Сілтеменің мерзімі өтті: деректеріңізді қорғау үшін сілтемелер қысқа уақыт жұмыс істейді. Құпиялылық орталығын кредитордың сайтынан қайта ашыңыз.",
        "Срок действия ссылки истёк: чтобы защитить ваши данные, ссылки действуют недолго. Откройте центр конфиденциальности заново на сайте кредитора.",
        "The link has expired: links work for a short time, to protect your data. Open the privacy centre again from the lender's website.",
    ],
    RequestRefused => [
        "Сұрауды тексеру мүмкін болмады, ештеңе өзгертілмеді. Бетті қайта жүктеп, әрекетті қайталаңыз.",
        "Запрос не удалось проверить, ничего не изменено. Обновите страницу и попробуйте снова.",
        "The request could not be verified, and nothing was changed. Reload the page and try again.",
    ],
    ErrorTitle => ["Қате", "Ошибка", "Something went wrong"],
    Unavailable => [
        "Қызмет уақытша қолжетімсіз; ештеңе өзгертілмеді. Бірнеше минуттан кейін қайталаңыз.",
        "Сервис временно недоступен; ничего не изменено. Попробуйте через несколько минут.",
        "The service is unavailable for a moment; nothing was changed. Try again in a few minutes.",
    ],
    Failed => [
        "Қате орын алды; ештеңе өзгертілмеді.",
        "Произошла ошибка; ничего не изменено.",
        "An error occurred; nothing was changed.",
    ],
    Footer => [
        "Кредитордың дербес деректер қоймасы. Осы беттегі әр әрекет тіркеледі.",
        "Хранилище персональных данных кредитора. Каждое действие на этой странице записывается.",
        "The lender's personal-data vault. Every action on this page is recorded.",
    ],
    PolicyInForce => [
        "Қолданыстағы құпиялылық саясаты: {version} нұсқасы.",
        "Действующая политика конфиденциальности: версия {version}.",
        "Privacy policy in force: version {version}.",
    ],
}

/// A label table: key → [kk, ru, en].
type Labels = &'static [(&'static str, [&'static str; 3])];

/// The default schema's fields.
pub const FIELDS: Labels = &[
    ("identity.full_name", ["Аты-жөні", "ФИО", "Full name"]),
    ("identity.iin", ["ЖСН", "ИИН", "IIN"]),
    ("identity.birth_date", ["Туған күні", "Дата рождения", "Date of birth"]),
    ("identity.phone", ["Телефон", "Телефон", "Phone"]),
    ("identity.email", ["Электрондық пошта", "Электронная почта", "Email"]),
    ("identity.address", ["Мекенжай", "Адрес", "Address"]),
    ("questionnaire.employer", ["Жұмыс беруші", "Работодатель", "Employer"]),
    ("questionnaire.monthly_income", ["Айлық табыс", "Ежемесячный доход", "Monthly income"]),
    ("questionnaire.dependants", ["Асырауындағылар саны", "Иждивенцы", "Dependants"]),
    ("questionnaire.loan_purpose", ["Қарыздың мақсаты", "Цель займа", "Purpose of the loan"]),
    ("technical.ip", ["IP мекенжайы", "IP-адрес", "IP address"]),
    ("technical.cookie_id", ["Cookie идентификаторы", "Идентификатор cookie", "Cookie identifier"]),
    ("technical.user_agent", ["Браузер", "Браузер", "Browser"]),
    ("technical.page", ["Ашылған бет", "Открытая страница", "Page visited"]),
    ("technical.isp_domain", ["Интернет-провайдер", "Интернет-провайдер", "Internet provider"]),
    ("technical.access_time", ["Кіру уақыты", "Время посещения", "Time of visit"]),
    ("contract.offer_id", ["Оферта нөмірі", "Номер оферты", "Offer number"]),
    ("contract.amount", ["Сомасы", "Сумма", "Amount"]),
    ("contract.term_days", ["Мерзімі (күн)", "Срок (дней)", "Term (days)"]),
    ("contract.offer_sent_at", ["Оферта жіберілді", "Оферта отправлена", "Offer sent"]),
    ("contract.offer_accepted_at", ["Оферта қабылданды", "Оферта принята", "Offer accepted"]),
];

/// The masked views a purpose may read a field through (`identity.iin:last4`).
pub const VIEWS: Labels = &[("last4", ["соңғы 4 таңбасы", "последние 4 символа", "last 4 characters"]), ("year", ["жылы", "год", "year"])];

/// The default schema's categories.
pub const CATEGORIES: Labels = &[
    ("identity", ["Жеке деректер", "Личные данные", "Identity"]),
    ("questionnaire", ["Сауалнама", "Анкета", "Questionnaire"]),
    ("technical", ["Техникалық деректер", "Технические данные", "Technical data"]),
    ("contract", ["Шарт деректері", "Данные договора", "Contract"]),
];

/// The default purposes.
pub const PURPOSES: Labels = &[
    ("loan_issuance", ["Қарыз беру", "Выдача займа", "Issuing a loan"]),
    ("loan_monitoring", ["Қарыз шартының орындалуын бақылау", "Сопровождение займа", "Monitoring the loan"]),
    ("third_party_transfer", ["Үшінші тұлғаларға беру", "Передача третьим лицам", "Transfer to third parties"]),
    ("advertising", ["Жарнамалық ұсыныстар", "Рекламные предложения", "Advertising offers"]),
    ("call_centre", ["Байланыс орталығы", "Колл-центр", "Call centre"]),
];

/// Contract states.
pub const CONTRACT_STATUS: Labels = &[
    ("open", ["Ашық", "Действует", "Open"]),
    ("settled", ["Өтелген", "Погашен", "Settled"]),
    ("breached", ["Бұзылған", "Нарушен", "Breached"]),
];

/// Disclosure bases (P10).
pub const BASES: Labels = &[
    ("consent", ["Сіздің келісіміңіз", "Ваше согласие", "Your consent"]),
    ("legal_obligation", ["Заң талабы", "Требование закона", "Required by law"]),
    ("contract_breach", ["Қарыз шартын бұзу", "Нарушение договора займа", "Breach of the loan contract"]),
];

/// Audited actions shown in the access summary.
pub const ACTIONS: Labels = &[
    ("subject.read", ["Оқу", "Чтение", "Read"]),
    ("subject.disclose", ["Үшінші тұлғаға беру", "Передача третьему лицу", "Passed to a third party"]),
    ("subject.export", ["Сізге көрсетілді немесе жүктелді", "Показано вам или выгружено", "Shown to you or exported"]),
];

/// The label of `key` in `table`, or `None` for names the table does not know (configured
/// fields, categories or purposes: the page shows those as they are).
pub fn label(table: Labels, key: &str, lang: Lang) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, l)| l[lang.index()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(s: &str) -> BTreeSet<String> {
        s.split('{').skip(1).filter_map(|p| p.split_once('}')).map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn every_message_in_every_language_with_the_same_placeholders() {
        for t in T::ALL {
            let en = t.get(Lang::En);
            for lang in Lang::ALL {
                let s = t.get(lang);
                assert!(!s.trim().is_empty(), "{t:?} is empty in {}", lang.code());
                assert_eq!(placeholders(s), placeholders(en), "{t:?} in {}", lang.code());
                assert!(!s.contains('<') && !s.contains('&'), "{t:?}: texts are plain text");
            }
            // Kazakh and Russian are translations, not copies of the English.
            assert_ne!(t.get(Lang::Kk), en, "{t:?} not translated into Kazakh");
            assert_ne!(t.get(Lang::Ru), en, "{t:?} not translated into Russian");
        }
    }

    #[test]
    fn every_default_name_has_a_label_in_every_language() {
        let schema = crate::schema::Schema::default();
        for (cat, def) in &schema.categories {
            assert!(label(CATEGORIES, cat, Lang::Kk).is_some(), "category {cat}");
            for name in def.fields.keys() {
                assert!(label(FIELDS, &format!("{cat}.{name}"), Lang::Kk).is_some(), "field {cat}.{name}");
            }
        }
        for p in crate::policy::Purposes::default().0.keys() {
            assert!(label(PURPOSES, p.as_str(), Lang::Kk).is_some(), "purpose {p}");
        }
        for v in crate::policy::View::ALL {
            assert!(label(VIEWS, v.as_str(), Lang::Kk).is_some(), "view {}", v.as_str());
        }
        for table in [FIELDS, CATEGORIES, PURPOSES, CONTRACT_STATUS, BASES, ACTIONS, VIEWS] {
            let keys: BTreeSet<_> = table.iter().map(|(k, _)| k).collect();
            assert_eq!(keys.len(), table.len(), "duplicate keys");
            for (k, l) in table {
                assert!(l.iter().all(|s| !s.trim().is_empty()), "{k}");
            }
        }
        assert_eq!(label(FIELDS, "identity.shoe_size", Lang::En), None);
    }

    #[test]
    fn language_negotiation() {
        let kk = Lang::Kk;
        assert_eq!(Lang::negotiate(Some("ru"), Some("en"), kk), Lang::Ru);
        assert_eq!(Lang::negotiate(Some("xx"), Some("en-GB,en;q=0.9"), kk), Lang::En);
        assert_eq!(Lang::negotiate(None, Some("de-DE,de;q=0.9,ru;q=0.8,en;q=0.7"), kk), Lang::Ru);
        assert_eq!(Lang::negotiate(None, Some("en;q=0.5, kk-KZ"), Lang::Ru), Lang::Kk);
        assert_eq!(Lang::negotiate(None, Some("fr, de"), Lang::Ru), Lang::Ru);
        assert_eq!(Lang::negotiate(None, Some("en;q=0"), kk), kk);
        assert_eq!(Lang::negotiate(None, None, Lang::En), Lang::En);
        assert_eq!(Lang::negotiate(None, Some(";;,,q=x"), kk), kk);
    }
}
